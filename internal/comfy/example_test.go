package comfy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"

	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/comfysim"
)

func ExampleClient_Run() {
	// An emulated ComfyUI stands in for the real one.
	sim, err := comfysim.New(comfysim.Config{})
	if err != nil {
		panic(err)
	}
	api := httptest.NewServer(sim.Handler())
	defer api.Close()
	defer sim.Close()

	ctx := context.Background()
	c, err := comfy.New(comfy.Config{BaseURL: api.URL})
	if err != nil {
		panic(err)
	}
	if err := c.Start(ctx); err != nil {
		panic(err)
	}
	defer c.Close()

	// The workflow is sent byte for byte: the seed keeps all 64 bits.
	workflow := []byte(`{
	  "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
	  "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
	  "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
	  "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
	  "3": {"class_type": "KSampler", "inputs": {"seed": 18446744073709551615, "steps": 2, "cfg": 8, "sampler_name": "euler",
	        "scheduler": "normal", "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
	  "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
	  "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}
	}`)
	res, err := c.Run(ctx, workflow, comfy.RunOptions{
		OnProgress: func(p comfy.Progress) {
			if p.State == "" {
				fmt.Printf("node %s: step %v of %v\n", p.Node, p.Value, p.Max)
			}
		},
	})
	var verr *comfy.ValidationError
	var xerr *comfy.ExecutionError
	switch {
	case errors.As(err, &verr):
		fmt.Println(verr.Message())
		return
	case errors.As(err, &xerr):
		fmt.Println(xerr.Detail())
		return
	case err != nil:
		fmt.Println(err)
		return
	}
	for _, f := range res.Files() {
		body, err := c.View(ctx, f.FileRef)
		if err != nil {
			panic(err)
		}
		data, _ := io.ReadAll(body)
		body.Close()
		fmt.Printf("node %s %s: %s (%s), PNG: %v\n", f.NodeID, f.Kind, f.Filename, f.Type, string(data[1:4]) == "PNG")
	}
	// Output:
	// node 3: step 1 of 2
	// node 3: step 2 of 2
	// node 9 images: ComfyUI_00001_.png (output), PNG: true
}
