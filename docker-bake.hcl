# Every variant of the worker image (Dockerfile.worker), with docker buildx bake:
#
#   docker buildx bake                          # all variants
#   docker buildx bake sdxl flux1-dev           # some
#   HUGGINGFACE_ACCESS_TOKEN=hf_... REGISTRY=ghcr.io/me TAG=1.2.0 docker buildx bake --push
#
# Tokens are build secrets read from your environment (never build args, so
# they are in no layer and no history). Each target is Dockerfile.worker's
# final stage with its MODEL_TYPE; a test checks the targets against the
# Dockerfile's MODEL_TYPE list.

variable "REGISTRY" {
  default = "comfyfleet"
}

variable "TAG" {
  default = "dev"
}

# MODEL_TYPE=jawi-vision: the URL of its LoRA and the file's SHA-256.
variable "JAWI_VISION_LORA_URL" {
  default = ""
}

variable "JAWI_VISION_LORA_SHA256" {
  default = ""
}

group "default" {
  targets = ["base", "sdxl", "sd3", "flux1-schnell", "flux1-dev", "flux1-dev-fp8", "z-image-turbo", "jawi-vision"]
}

target "_common" {
  context    = "."
  dockerfile = "Dockerfile.worker"
  target     = "final"
  platforms  = ["linux/amd64"]
  secret = [
    "id=hf_token,env=HUGGINGFACE_ACCESS_TOKEN",
    "id=civitai_token,env=CIVITAI_ACCESS_TOKEN",
  ]
}

target "base" {
  inherits = ["_common"]
  args     = { MODEL_TYPE = "base" }
  tags     = ["${REGISTRY}/worker:${TAG}-base"]
}

target "sdxl" {
  inherits = ["_common"]
  args     = { MODEL_TYPE = "sdxl" }
  tags     = ["${REGISTRY}/worker:${TAG}-sdxl"]
}

target "sd3" {
  inherits = ["_common"]
  args     = { MODEL_TYPE = "sd3" }
  tags     = ["${REGISTRY}/worker:${TAG}-sd3"]
}

target "flux1-schnell" {
  inherits = ["_common"]
  args     = { MODEL_TYPE = "flux1-schnell" }
  tags     = ["${REGISTRY}/worker:${TAG}-flux1-schnell"]
}

target "flux1-dev" {
  inherits = ["_common"]
  args     = { MODEL_TYPE = "flux1-dev" }
  tags     = ["${REGISTRY}/worker:${TAG}-flux1-dev"]
}

# The default variant, as upstream's: also tagged without a suffix.
target "flux1-dev-fp8" {
  inherits = ["_common"]
  args     = { MODEL_TYPE = "flux1-dev-fp8" }
  tags     = ["${REGISTRY}/worker:${TAG}-flux1-dev-fp8", "${REGISTRY}/worker:${TAG}"]
}

target "z-image-turbo" {
  inherits = ["_common"]
  args     = { MODEL_TYPE = "z-image-turbo" }
  tags     = ["${REGISTRY}/worker:${TAG}-z-image-turbo"]
}

target "jawi-vision" {
  inherits = ["_common"]
  args = {
    MODEL_TYPE              = "jawi-vision"
    JAWI_VISION_LORA_URL    = "${JAWI_VISION_LORA_URL}"
    JAWI_VISION_LORA_SHA256 = "${JAWI_VISION_LORA_SHA256}"
  }
  tags = ["${REGISTRY}/worker:${TAG}-jawi-vision"]
}
