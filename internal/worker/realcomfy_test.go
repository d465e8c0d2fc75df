package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/simtest"
	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

// realComfyEnv names the ComfyUI the end-to-end cases of
// TestEndToEndWeightFree run against (make realcomfy COMFYUI_URL=…). Unset,
// they run against the emulator, so make test runs them too.
const realComfyEnv = "REALCOMFY_URL"

// TestEndToEndWeightFree runs the worker's end-to-end cases that need no
// model weights against a ComfyUI: the one REALCOMFY_URL names (which must
// load the custom node of internal/comfysim/testdata/realcomfy/fidelity_nodes
// for the cancel case), or a fresh emulator. File-name counters are not
// checked: a real server keeps its output folder between runs.
func TestEndToEndWeightFree(t *testing.T) {
	t.Parallel()
	url := os.Getenv(realComfyEnv)
	// Each run's prefixes differ, so a real server's cache from an earlier
	// run does not answer for this one.
	run := fmt.Sprint(time.Now().UnixNano())
	red := pngBytes(t, 6, 4, color.RGBA{R: 200, G: 40, B: 10, A: 255})
	cases := []struct {
		name   string
		input  string
		during func(b *bundle, id string, events *eventLog)
		want   proto.Status
		check  func(t *testing.T, b *bundle, rec *proto.Record)
		// alone runs the case before the others, not beside them.
		alone bool
	}{{
		name: "image chain",
		input: input(fmt.Sprintf(`"1":{"class_type":"EmptyImage","inputs":{"width":12,"height":8,"batch_size":2,"color":1056816}},
			"2":{"class_type":"ImageInvert","inputs":{"image":["1",0]}},
			"3":{"class_type":"ImageScaleBy","inputs":{"image":["2",0],"upscale_method":"bilinear","scale_by":0.5}},
			"4":{"class_type":"SaveImage","inputs":{"images":["3",0],"filename_prefix":"rc_%s/chain"}}`, run)),
		want: proto.StatusCompleted,
		check: func(t *testing.T, b *bundle, rec *proto.Record) {
			out := b.output(rec)
			require.Len(t, out.Images, 2)
			for _, it := range out.Images {
				require.True(t, strings.HasPrefix(it.Filename, "chain_"), it.Filename)
				img, err := png.Decode(bytes.NewReader(b.blobBytes(it.Blob)))
				require.NoError(t, err)
				require.Equal(t, image.Rect(0, 0, 6, 4), img.Bounds())
				r, g, bl, _ := img.At(0, 0).RGBA()
				// 0x102030 inverted: ef df cf, within rounding.
				require.InDelta(t, 0xef, r>>8, 2)
				require.InDelta(t, 0xdf, g>>8, 2)
				require.InDelta(t, 0xcf, bl>>8, 2)
			}
		},
	}, {
		name: "input image",
		input: input(fmt.Sprintf(`"1":{"class_type":"LoadImage","inputs":{"image":"in.png"}},
			"2":{"class_type":"ImageInvert","inputs":{"image":["1",0]}},
			"3":{"class_type":"SaveImage","inputs":{"images":["2",0],"filename_prefix":"rc_%s/inv"}}`, run),
			`"images":[{"name":"in.png","image":"`+b64(red)+`"}]`),
		want: proto.StatusCompleted,
		check: func(t *testing.T, b *bundle, rec *proto.Record) {
			out := b.output(rec)
			require.Len(t, out.Images, 1)
			img, err := png.Decode(bytes.NewReader(b.blobBytes(out.Images[0].Blob)))
			require.NoError(t, err)
			require.Equal(t, image.Rect(0, 0, 6, 4), img.Bounds())
			r, g, bl, _ := img.At(3, 2).RGBA()
			// (200, 40, 10) inverted in float32, truncated by SaveImage.
			require.InDelta(t, 55, r>>8, 1)
			require.InDelta(t, 215, g>>8, 1)
			require.InDelta(t, 245, bl>>8, 1)
		},
	}, {
		name: "outputs of every kind",
		input: input(fmt.Sprintf(`"1":{"class_type":"EmptyImage","inputs":{"width":16,"height":12,"batch_size":3,"color":255}},
			"2":{"class_type":"SaveAnimatedWEBP","inputs":{"images":["1",0],"filename_prefix":"rc_%[1]s/anim","fps":4,"lossless":true,"quality":80,"method":"default"}},
			"3":{"class_type":"CreateVideo","inputs":{"images":["1",0],"fps":4}},
			"4":{"class_type":"SaveVideo","inputs":{"video":["3",0],"filename_prefix":"rc_%[1]s/video","format":"auto","codec":"auto"}},
			"5":{"class_type":"PrimitiveString","inputs":{"value":"hello %[1]s"}},
			"6":{"class_type":"PreviewAny","inputs":{"source":["5",0]}},
			"7":{"class_type":"SaveImage","inputs":{"images":["1",0],"filename_prefix":"rc_%[1]s/still"}}`, run)),
		want: proto.StatusCompleted,
		check: func(t *testing.T, b *bundle, rec *proto.Record) {
			out := b.output(rec)
			require.Len(t, out.Images, 3, "the stills")
			var mimes []string
			for _, v := range out.Videos {
				mimes = append(mimes, v.Mime)
			}
			require.ElementsMatch(t, []string{"image/webp", "video/mp4"}, mimes)
			require.Equal(t, []proto.OutputItem{{Type: proto.ItemText, Data: "hello " + run, NodeID: "6", Mime: "text/plain"}}, out.Text)
		},
	}, {
		name:  "validation error",
		input: input(`"1":{"class_type":"ImageInvert","inputs":{}},"2":{"class_type":"SaveImage","inputs":{"images":["1",0],"filename_prefix":"x"}}`),
		want:  proto.StatusFailed,
		check: func(t *testing.T, b *bundle, rec *proto.Record) {
			require.True(t, strings.HasPrefix(rec.Error, "Workflow validation failed:"), rec.Error)
			require.Contains(t, rec.Error, "ImageInvert input image: Required input is missing")
			require.Equal(t, 1, rec.Attempt, "no retry")
		},
	}, {
		name: "node error",
		input: input(fmt.Sprintf(`"1":{"class_type":"EmptyImage","inputs":{"width":8,"height":8,"batch_size":1,"color":%d}},
			"2":{"class_type":"ImageScaleBy","inputs":{"image":["1",0],"upscale_method":"nearest-exact","scale_by":0.01}},
			"3":{"class_type":"SaveImage","inputs":{"images":["2",0],"filename_prefix":"x"}}`, time.Now().UnixNano()%0xffffff)),
		want: proto.StatusFailed,
		check: func(t *testing.T, b *bundle, rec *proto.Record) {
			require.Equal(t, "Job processing failed", rec.Error)
			var f proto.Failure
			require.NoError(t, json.Unmarshal(rec.Output, &f))
			require.Len(t, f.Details, 1)
			require.Contains(t, f.Details[0], "Node Type: ImageScaleBy, Node ID: 2, Message: Input and output sizes should be greater than 0")
		},
	}, {
		name: "cancel inside a long node",
		input: input(fmt.Sprintf(`"1":{"class_type":"FidelityLongNode","inputs":{"steps":200,"delay":0.1,"seed":%d,"size":8,"check":true}},
			"2":{"class_type":"SaveImage","inputs":{"images":["1",0],"filename_prefix":"x"}}`, time.Now().UnixNano()%256)),
		during: func(b *bundle, id string, events *eventLog) {
			// The node runs once it reports progress: the cancel then
			// interrupts it, not a prompt still waiting to start.
			eventually(b.t, func() bool { return len(events.ofType("progress")) > 0 }, "the long node never reported progress")
			_, err := b.core.Cancel(context.Background(), id)
			require.NoError(b.t, err)
		},
		want: proto.StatusCancelled,
		// Alone on the server: behind another case's prompt in ComfyUI's
		// queue, the cancel would delete it from the queue and never
		// interrupt a running node.
		alone: true,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.alone {
				t.Parallel()
			}
			b := setup(t)
			comfy := b.sim
			if url != "" {
				comfy = &simtest.Sim{URL: strings.TrimRight(url, "/")}
			}
			b.startWorker("w1", worker.Config{RetryDelay: 20 * time.Millisecond}, workerOpts{sim: comfy})
			id := "rc-" + strings.ReplaceAll(tc.name, " ", "-")
			events := b.watch(id)
			b.enqueue(id, tc.input)
			if tc.during != nil {
				b.wait(id, proto.StatusInProgress)
				tc.during(b, id, events)
			}
			rec := b.wait(id, tc.want)
			if tc.check != nil {
				tc.check(t, b, rec)
			}
		})
	}

	// A repeated workflow: ComfyUI answers from its cache, re-sends
	// executed with the old file names and writes nothing; the job still
	// returns the image. It runs alone, as the cancel case does: ComfyUI's
	// cache keeps the outputs of the last prompt only, so another case's
	// prompt between the two would make the second run again.
	t.Run("cached re-run", func(t *testing.T) {
		b := setup(t)
		comfy := b.sim
		if url != "" {
			comfy = &simtest.Sim{URL: strings.TrimRight(url, "/")}
		}
		b.startWorker("w1", worker.Config{}, workerOpts{sim: comfy})
		wf := input(fmt.Sprintf(`"1":{"class_type":"EmptyImage","inputs":{"width":8,"height":8,"batch_size":1,"color":4210752}},
			"2":{"class_type":"SaveImage","inputs":{"images":["1",0],"filename_prefix":"rc_%s/cached"}}`, run))
		b.enqueue("rc-first", wf)
		first := b.output(b.wait("rc-first", proto.StatusCompleted))
		b.enqueue("rc-again", wf)
		again := b.output(b.wait("rc-again", proto.StatusCompleted))
		require.Len(t, again.Images, 1)
		require.Equal(t, first.Images[0].Filename, again.Images[0].Filename)
		require.Equal(t, b.blobBytes(first.Images[0].Blob), b.blobBytes(again.Images[0].Blob))
	})
}
