package comfysim_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/gorilla/websocket"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
)

// Example runs one prompt the way a ComfyUI client does: open the WebSocket
// with a clientId, POST /prompt with the same client_id and a prompt_id, wait
// for executing{node: null}, then read /history.
func Example() {
	srv, err := comfysim.New(comfysim.Config{StepDelay: -1})
	if err != nil {
		panic(err)
	}
	api := httptest.NewServer(srv.Handler())
	defer api.Close()
	defer srv.Close() // first: it closes the WebSockets

	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(api.URL, "http")+"/ws?clientId=example", nil)
	if err != nil {
		panic(err)
	}
	defer ws.Close()

	const pid = "3f0e8c52-9d1b-4f6a-a9b1-2c7e5d4f8a10"
	prompt := `{
	  "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
	  "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
	  "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
	  "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
	  "3": {"class_type": "KSampler", "inputs": {"seed": 18446744073709551615, "steps": 20, "cfg": 8, "sampler_name": "euler",
	        "scheduler": "normal", "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
	  "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
	  "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}}`
	resp, err := http.Post(api.URL+"/prompt", "application/json",
		strings.NewReader(`{"prompt": `+prompt+`, "client_id": "example", "prompt_id": "`+pid+`"}`))
	if err != nil {
		panic(err)
	}
	resp.Body.Close()

	for {
		var m struct {
			Type string `json:"type"`
			Data struct {
				Node     *string `json:"node"`
				PromptID string  `json:"prompt_id"`
			} `json:"data"`
		}
		if err := ws.ReadJSON(&m); err != nil {
			panic(err)
		}
		if m.Type == "executing" && m.Data.Node == nil && m.Data.PromptID == pid {
			break
		}
	}

	resp, err = http.Get(api.URL + "/history/" + pid)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var hist map[string]struct {
		Outputs map[string]struct {
			Images []struct{ Filename, Subfolder, Type string }
		}
		Status struct {
			StatusStr string `json:"status_str"`
		}
	}
	if err := json.Unmarshal(b, &hist); err != nil {
		panic(err)
	}
	fmt.Println(hist[pid].Status.StatusStr, hist[pid].Outputs["9"].Images[0].Filename)
	// Output: success ComfyUI_00001_.png
}
