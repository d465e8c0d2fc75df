package bench

import (
	"fmt"
	"strconv"
)

// workflowSteps is the KSampler's step count, as in examples/txt2img.json:
// the emulator sleeps its step delay this many times per job.
const workflowSteps = 20

// steps describes the jobs' sampler steps for a table; a negative delay
// is a running stack's, unknown.
func steps(delayMS float64) string {
	if delayMS < 0 {
		return fmt.Sprintf("%d steps a job at the running stack's step delay", workflowSteps)
	}
	return fmt.Sprintf("%d steps of %.1f ms a job", workflowSteps, delayMS)
}

// workflow is the graph of examples/txt2img.json with the image size and
// the seed as parameters. Every job of a run gets its own seed, so no
// prompt is served from ComfyUI's cache.
func workflow(size int, seed uint64) []byte {
	return workflowOn(defaultCheckpoint, size, seed)
}

// defaultCheckpoint is the checkpoint of examples/txt2img.json, the one
// the emulators offer by default.
const defaultCheckpoint = "v1-5-pruned-emaonly.safetensors"

// workflowOn is workflow on the checkpoint ckpt.
func workflowOn(ckpt string, size int, seed uint64) []byte {
	return fmt.Appendf(nil, `{`+
		`"4":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":%q}},`+
		`"5":{"class_type":"EmptyLatentImage","inputs":{"width":%d,"height":%d,"batch_size":1}},`+
		`"6":{"class_type":"CLIPTextEncode","inputs":{"text":"a lighthouse on a cliff at dawn, oil painting","clip":["4",1]}},`+
		`"7":{"class_type":"CLIPTextEncode","inputs":{"text":"blurry, low quality","clip":["4",1]}},`+
		`"3":{"class_type":"KSampler","inputs":{"seed":%s,"steps":%d,"cfg":7,"sampler_name":"euler","scheduler":"normal","denoise":1,`+
		`"model":["4",0],"positive":["6",0],"negative":["7",0],"latent_image":["5",0]}},`+
		`"8":{"class_type":"VAEDecode","inputs":{"samples":["3",0],"vae":["4",2]}},`+
		`"9":{"class_type":"SaveImage","inputs":{"filename_prefix":"ComfyUI","images":["8",0]}}}`,
		ckpt, size, size, strconv.FormatUint(seed, 10), workflowSteps)
}

// runInput is RunPod's input object of a workflow.
func runInput(wf []byte) []byte {
	b := make([]byte, 0, len(wf)+16)
	b = append(b, `{"workflow":`...)
	b = append(b, wf...)
	return append(b, '}')
}

// runBody is RunPod's request body of a workflow.
func runBody(wf []byte) []byte {
	in := runInput(wf)
	b := make([]byte, 0, len(in)+12)
	b = append(b, `{"input":`...)
	b = append(b, in...)
	return append(b, '}')
}

// runBodies is n request bodies, each with its own seed from *seed on.
func runBodies(size, n int, seed *uint64) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = runBody(workflow(size, *seed))
		*seed++
	}
	return out
}
