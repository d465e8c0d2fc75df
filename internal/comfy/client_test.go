package comfy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"io/fs"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/simtest"
)

const maxSeed = "18446744073709551615"

// txt2img is protocol §2's workflow with the given checkpoint, seed (JSON
// number text) and step count.
func txt2img(ckpt, seed string, steps int) []byte {
	return []byte(fmt.Sprintf(`{
  "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": %q}, "_meta": {"title": "Load Checkpoint"}},
  "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
  "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
  "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
  "3": {"class_type": "KSampler", "inputs": {"seed": %s, "steps": %d, "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
  "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
  "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}
}`, ckpt, seed, steps))
}

type testEnv struct {
	c   *Client
	sim *simtest.Sim
}

// setup starts an emulator and a started Client for it. The history poll is
// off unless the test turns it on, so reconnect handling is what is tested.
func setup(t *testing.T, simCfg comfysim.Config, tweak func(*Config)) testEnv {
	t.Helper()
	sim := simtest.Start(t, simCfg)
	cfg := Config{
		BaseURL:             sim.URL,
		Logger:              zaptest.NewLogger(t),
		ReconnectAttempts:   3,
		ReconnectDelay:      10 * time.Millisecond,
		HistoryPollInterval: -1,
		DialTimeout:         2 * time.Second,
		RequestTimeout:      5 * time.Second,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	c, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Close()) })
	require.NoError(t, c.Start(context.Background()))
	return testEnv{c: c, sim: sim}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// receive waits for a value from ch, failing the test after 20s.
func receive[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatal("timed out waiting on a channel")
	}
	var zero T
	return zero
}

// onStep returns a progress callback that closes the returned channel once
// the KSampler (node 3) reports step n. The emulator's step faults act
// before the step's tick, so a hang at step n+1 follows the tick of step n.
func onStep(n float64) (func(Progress), <-chan struct{}) {
	reached := make(chan struct{})
	var once sync.Once
	return func(p Progress) {
		if p.Node == "3" && p.State == "" && p.Value >= n {
			once.Do(func() { close(reached) })
		}
	}, reached
}

func TestRunTxt2Img(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{}, nil)
	ctx := testCtx(t)

	res, err := env.c.Run(ctx, txt2img(comfysim.DefaultCheckpoint, maxSeed, 3), RunOptions{
		ExtraData: map[string]any{"extra_pnginfo": map[string]any{"workflow": map[string]any{"id": "wf-1"}}},
	})
	require.NoError(t, err)
	require.Empty(t, res.NodeErrors)

	files := res.Files()
	require.Len(t, files, 1)
	f := files[0]
	require.Equal(t, "9", f.NodeID)
	require.Equal(t, "images", f.Kind)
	require.Equal(t, "output", f.Type)
	require.True(t, strings.HasSuffix(f.Filename, ".png"), f.Filename)

	rc, err := env.c.View(ctx, f.FileRef)
	require.NoError(t, err)
	data, err := io.ReadAll(rc)
	require.NoError(t, rc.Close())
	require.NoError(t, err)
	img, err := png.Decode(bytes.NewReader(data))
	require.NoError(t, err, "View returns a real PNG")
	require.Equal(t, 64, img.Bounds().Dx())

	_, err = env.c.View(ctx, FileRef{Filename: "nope.png", Type: "output"})
	require.ErrorIs(t, err, fs.ErrNotExist)
}

func TestSeedReachesComfyUIUnchanged(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{}, nil)
	ctx := testCtx(t)

	res, err := env.c.Run(ctx, txt2img(comfysim.DefaultCheckpoint, maxSeed, 1), RunOptions{})
	require.NoError(t, err)

	// Read it back through a fresh History call, as stored by ComfyUI.
	entry, ok, err := env.c.History(ctx, res.PromptID)
	require.NoError(t, err)
	require.True(t, ok)
	dec := json.NewDecoder(bytes.NewReader(entry.Workflow()))
	dec.UseNumber()
	var wf map[string]struct {
		Inputs map[string]any `json:"inputs"`
	}
	require.NoError(t, dec.Decode(&wf))
	require.Equal(t, json.Number(maxSeed), wf["3"].Inputs["seed"])
}

func TestValidationUnknownCheckpoint(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{Checkpoints: []string{"a.safetensors", "b.safetensors"}}, nil)
	ctx := testCtx(t)

	res, err := env.c.Run(ctx, txt2img("missing.safetensors", "1", 1), RunOptions{})
	require.Nil(t, res)
	var ve *ValidationError
	require.ErrorAs(t, err, &ve)
	require.Equal(t, "prompt_outputs_failed_validation", ve.ErrorType)
	require.Equal(t,
		"Workflow validation failed:\n"+
			"• Node 4 (errors): CheckpointLoaderSimple input ckpt_name: Value not in list: 'missing.safetensors' not in ['a.safetensors', 'b.safetensors']\n\n"+
			"Available checkpoint models: a.safetensors, b.safetensors",
		ve.Message())

	// Nothing is left waiting.
	env.c.mu.Lock()
	require.Empty(t, env.c.waiters)
	env.c.mu.Unlock()
}

func TestValidationLongOptionListIsLookedUp(t *testing.T) {
	t.Parallel()
	var ckpts []string
	for i := range 25 {
		ckpts = append(ckpts, fmt.Sprintf("m%02d.safetensors", i))
	}
	env := setup(t, comfysim.Config{Checkpoints: ckpts}, nil)
	ctx := testCtx(t)

	_, err := env.c.Run(ctx, txt2img("missing.safetensors", "1", 1), RunOptions{})
	var ve *ValidationError
	require.ErrorAs(t, err, &ve)
	choices := ve.InvalidChoices()
	require.Len(t, choices, 1)
	require.True(t, choices[0].Known, "options come from /object_info when the error leaves them out")
	require.Equal(t, ckpts, choices[0].Options)
	require.True(t, strings.HasSuffix(ve.Message(), "\n\nAvailable checkpoint models: "+strings.Join(ckpts, ", ")), ve.Message())
}

func TestPartialRunReportsNodeErrors(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{}, nil)
	ctx := testCtx(t)

	wf := bytes.TrimSuffix(bytes.TrimSpace(txt2img(comfysim.DefaultCheckpoint, "5", 1)), []byte("}"))
	wf = append(wf, []byte(`,
  "20": {"class_type": "LoadImage", "inputs": {"image": "not-there.png"}},
  "21": {"class_type": "PreviewImage", "inputs": {"images": ["20", 0]}}
}`)...)
	res, err := env.c.Run(ctx, wf, RunOptions{})
	require.NoError(t, err)
	require.Len(t, res.NodeErrors, 1)
	require.Equal(t, "20", res.NodeErrors[0].NodeID)
	require.Equal(t, "LoadImage", res.NodeErrors[0].ClassType)
	require.Equal(t, []string{"21"}, res.NodeErrors[0].DependentOutputs)
	require.Len(t, res.Files(), 1, "the valid output ran")
}

func TestServerErrorIsNotUnavailable(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{}, nil)
	ctx := testCtx(t)

	// A UI-format workflow makes ComfyUI ≥ v0.14 answer 500 (§2).
	_, err := env.c.Run(ctx, []byte(`{"last_node_id": 9, "nodes": [], "links": []}`), RunOptions{})
	var se *StatusError
	require.ErrorAs(t, err, &se)
	require.Equal(t, http.StatusInternalServerError, se.StatusCode)
	require.NotErrorIs(t, err, ErrUnavailable)
	require.Equal(t, "500 Server Error: Internal Server Error for url: /prompt", se.Error(), "the path, never ComfyUI's address")

	_, err = env.c.Run(ctx, []byte(`[1, 2]`), RunOptions{})
	require.ErrorContains(t, err, "not a JSON object")
}

func TestNodeFailure(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		fault   comfysim.Fault
		nodeID  string
		oom     bool
		typeStr string
	}{
		{name: "exception", fault: comfysim.Fault{FailClass: "VAEDecode", FailMessage: "boom"}, nodeID: "8", typeStr: "RuntimeError"},
		{name: "out of memory mid-sampling", fault: comfysim.Fault{FailClass: "KSampler", FailOOM: true, FailAtStep: 2}, nodeID: "3", oom: true, typeStr: "torch.OutOfMemoryError"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := setup(t, comfysim.Config{}, nil)
			ctx := testCtx(t)
			env.sim.SetFault(tt.fault)

			res, err := env.c.Run(ctx, txt2img(comfysim.DefaultCheckpoint, "7", 3), RunOptions{})
			var xerr *ExecutionError
			require.ErrorAs(t, err, &xerr)
			require.Equal(t, tt.nodeID, xerr.NodeID)
			require.Equal(t, tt.typeStr, xerr.ExceptionType)
			require.Equal(t, tt.oom, xerr.IsOOM())
			require.NotEmpty(t, xerr.Traceback)
			require.True(t, strings.HasPrefix(xerr.Detail(), "Workflow execution error: Node Type: "), xerr.Detail())
			if !tt.oom {
				require.Equal(t, "Workflow execution error: Node Type: VAEDecode, Node ID: 8, Message: boom", xerr.Detail())
			}
			require.NotNil(t, res, "the failed prompt's result comes back too")
			require.Empty(t, res.Files())
		})
	}
}

func TestInterrupt(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{}, nil)
	ctx := testCtx(t)
	env.sim.SetFault(comfysim.Fault{HangAtStep: 2})

	onProgress, reached := onStep(1)
	id := uuid.NewString()
	errc := make(chan error, 1)
	go func() {
		_, err := env.c.Run(ctx, txt2img(comfysim.DefaultCheckpoint, "8", 5), RunOptions{PromptID: id, OnProgress: onProgress})
		errc <- err
	}()
	receive(t, reached)
	require.NoError(t, env.c.Interrupt(ctx, id))
	err := receive(t, errc)
	require.ErrorIs(t, err, ErrInterrupted)
	var ie *InterruptedError
	require.ErrorAs(t, err, &ie)
	require.Equal(t, "3", ie.NodeID)
	require.Equal(t, "KSampler", ie.NodeType)
	require.False(t, ie.Removed)
}

func TestCancelPendingAndRunning(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{}, nil)
	ctx := testCtx(t)
	env.sim.SetFault(comfysim.Fault{HangAtStep: 2})

	// Callbacks run inside Wait, so the first prompt is followed at once.
	onProgress, reached := onStep(1)
	first, err := env.c.Submit(ctx, txt2img(comfysim.DefaultCheckpoint, "9", 3), RunOptions{OnProgress: onProgress})
	require.NoError(t, err)
	firstErr := make(chan error, 1)
	go func() {
		_, err := env.c.Wait(ctx, first.PromptID)
		firstErr <- err
	}()
	receive(t, reached)
	second, err := env.c.Submit(ctx, txt2img(comfysim.DefaultCheckpoint, "10", 3), RunOptions{})
	require.NoError(t, err)

	q, err := env.c.Queue(ctx)
	require.NoError(t, err)
	require.True(t, q.IsRunning(first.PromptID))
	require.True(t, q.IsPending(second.PromptID))

	require.NoError(t, env.c.Cancel(ctx, second.PromptID))
	_, err = env.c.Wait(ctx, second.PromptID)
	var ie *InterruptedError
	require.ErrorAs(t, err, &ie)
	require.True(t, ie.Removed)

	require.NoError(t, env.c.Cancel(ctx, first.PromptID))
	err = receive(t, firstErr)
	require.ErrorAs(t, err, &ie)
	require.False(t, ie.Removed)
	require.Equal(t, "3", ie.NodeID)
}

func TestRunContextCancelLeavesPromptToCaller(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{}, nil)
	env.sim.SetFault(comfysim.Fault{HangAtStep: 2})

	onProgress, reached := onStep(1)
	ctx, cancel := context.WithCancel(testCtx(t))
	id := uuid.NewString()
	errc := make(chan error, 1)
	go func() {
		_, err := env.c.Run(ctx, txt2img(comfysim.DefaultCheckpoint, "11", 3), RunOptions{PromptID: id, OnProgress: onProgress})
		errc <- err
	}()
	receive(t, reached)
	cancel()
	err := receive(t, errc)
	require.ErrorIs(t, err, context.Canceled)

	ctx = testCtx(t)
	q, err := env.c.Queue(ctx)
	require.NoError(t, err)
	require.True(t, q.IsRunning(id), "the prompt keeps running until the caller stops it")
	require.NoError(t, env.c.Cancel(ctx, id))
	_, err = env.c.Wait(ctx, id)
	require.ErrorIs(t, err, ErrInterrupted)
}

func TestWebSocketDroppedMidRun(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		reconnectDelay time.Duration
		stepDelay      time.Duration
	}{
		// The socket is back while the prompt still runs: the rest of its
		// messages arrive on the new one.
		{name: "back before the end", reconnectDelay: 5 * time.Millisecond, stepDelay: 30 * time.Millisecond},
		// The prompt ends while the socket is down: the end is only
		// learnt through /history after the reconnect.
		{name: "ends while disconnected", reconnectDelay: 300 * time.Millisecond, stepDelay: time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := setup(t, comfysim.Config{StepDelay: tt.stepDelay}, func(c *Config) { c.ReconnectDelay = tt.reconnectDelay })
			ctx := testCtx(t)
			env.sim.SetFault(comfysim.Fault{DropWebSocketsAtStep: 2})

			res, err := env.c.Run(ctx, txt2img(comfysim.DefaultCheckpoint, "12", 6), RunOptions{})
			require.NoError(t, err)
			require.Len(t, res.Files(), 1)
			require.Eventually(t, env.c.Connected, 5*time.Second, 5*time.Millisecond)
		})
	}
}

func TestRestartMidRunLosesPrompt(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{}, nil)
	ctx := testCtx(t)
	env.sim.SetFault(comfysim.Fault{RestartAtStep: 2})

	res, err := env.c.Run(ctx, txt2img(comfysim.DefaultCheckpoint, "13", 5), RunOptions{})
	require.Nil(t, res)
	require.ErrorIs(t, err, ErrPromptLost)
	require.NotErrorIs(t, err, ErrUnavailable)

	// The same client works against the restarted ComfyUI.
	env.sim.SetFault(comfysim.Fault{})
	_, err = env.c.Run(ctx, txt2img(comfysim.DefaultCheckpoint, "14", 1), RunOptions{})
	require.NoError(t, err)
}

func TestComfyUIDown(t *testing.T) {
	t.Parallel()
	for _, status := range []int{0, http.StatusServiceUnavailable} {
		t.Run(fmt.Sprintf("down status %d", status), func(t *testing.T) {
			t.Parallel()
			sim := simtest.Start(t, comfysim.Config{})
			sim.SetFault(comfysim.Fault{DownStatus: status})
			sim.SetDown(true)
			ctx := testCtx(t)
			c, err := New(Config{BaseURL: sim.URL, Logger: zaptest.NewLogger(t), DialTimeout: 2 * time.Second})
			require.NoError(t, err)
			defer c.Close()

			require.ErrorIs(t, c.Start(ctx), ErrUnavailable)
			_, err = c.SystemStats(ctx)
			require.ErrorIs(t, err, ErrUnavailable)
			_, err = c.Run(ctx, txt2img(comfysim.DefaultCheckpoint, "1", 1), RunOptions{})
			require.ErrorIs(t, err, ErrNotStarted)

			sim.SetDown(false)
			require.NoError(t, c.Start(ctx), "Start may be retried")
			st, err := c.SystemStats(ctx)
			require.NoError(t, err)
			require.Equal(t, comfysim.ComfyUIVersion, st.ComfyUIVersion)
		})
	}
}

func TestComfyUIGoesDownMidRun(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{}, nil)
	ctx := testCtx(t)
	env.sim.SetFault(comfysim.Fault{HangAtStep: 2})

	onProgress, reached := onStep(1)
	errc := make(chan error, 1)
	go func() {
		_, err := env.c.Run(ctx, txt2img(comfysim.DefaultCheckpoint, "15", 4), RunOptions{OnProgress: onProgress})
		errc <- err
	}()
	receive(t, reached)
	env.sim.SetDown(true)
	err := receive(t, errc)
	require.ErrorIs(t, err, ErrUnavailable)
	require.ErrorContains(t, err, "failed to reconnect")

	// While down, Submit fails fast instead of hanging.
	_, err = env.c.Submit(ctx, txt2img(comfysim.DefaultCheckpoint, "16", 1), RunOptions{})
	require.ErrorIs(t, err, ErrUnavailable)

	// Once ComfyUI is back, the next Submit redials at once.
	env.sim.SetFault(comfysim.Fault{})
	env.sim.SetDown(false)
	_, err = env.c.Run(ctx, txt2img(comfysim.DefaultCheckpoint, "17", 1), RunOptions{})
	require.NoError(t, err)
}

func TestProgressAndPreviews(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{StepDelay: 2 * time.Millisecond}, nil)
	ctx := testCtx(t)

	var ticks []Progress
	finished := map[string]bool{}
	var previews []Preview
	id := uuid.NewString()
	_, err := env.c.Run(ctx, txt2img(comfysim.DefaultCheckpoint, "18", 8), RunOptions{
		PromptID:  id,
		ExtraData: map[string]any{"preview_method": "auto"},
		OnProgress: func(p Progress) {
			require.Equal(t, id, p.PromptID)
			switch {
			case p.State == "" && p.Node == "3":
				ticks = append(ticks, p)
			case p.State == "finished":
				finished[p.Node] = true
			}
		},
		OnPreview: func(p Preview) { previews = append(previews, p) },
	})
	require.NoError(t, err)

	require.GreaterOrEqual(t, len(ticks), 2)
	for i := 1; i < len(ticks); i++ {
		require.Greater(t, ticks[i].Value, ticks[i-1].Value, "sampler steps increase")
	}
	last := ticks[len(ticks)-1]
	require.InDelta(t, 8, last.Value, 0)
	require.InDelta(t, 8, last.Max, 0)
	require.True(t, finished["3"] && finished["9"], "progress_state reports finished nodes: %v", finished)

	require.NotEmpty(t, previews)
	for _, p := range previews {
		require.Equal(t, id, p.PromptID, "type-4 previews carry the prompt id")
		require.Equal(t, "image/jpeg", p.MediaType)
		require.NotEmpty(t, p.Data)
	}
}

func TestWaitForPromptOfAnotherClient(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{StepDelay: 10 * time.Millisecond}, func(c *Config) { c.HistoryPollInterval = 20 * time.Millisecond })
	ctx := testCtx(t)

	// Posted without client_id: no execution message reaches any socket,
	// so only the history poll can see the end.
	id := uuid.NewString()
	body := `{"prompt": ` + string(txt2img(comfysim.DefaultCheckpoint, "19", 5)) + `, "prompt_id": "` + id + `"}`
	resp, err := http.Post(env.sim.URL+"/prompt", "application/json", strings.NewReader(body))
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)

	res, err := env.c.Wait(ctx, id)
	require.NoError(t, err)
	require.Len(t, res.Files(), 1)

	_, err = env.c.Wait(ctx, uuid.NewString())
	require.ErrorIs(t, err, ErrPromptLost, "an id ComfyUI never saw")
}

func TestUploadImage(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{}, nil)
	ctx := testCtx(t)

	pngOf := func(c color.Color) []byte {
		img := image.NewRGBA(image.Rect(0, 0, 8, 8))
		for x := range 8 {
			for y := range 8 {
				img.Set(x, y, c)
			}
		}
		var b bytes.Buffer
		require.NoError(t, png.Encode(&b, img))
		return b.Bytes()
	}
	red, blue := pngOf(color.RGBA{R: 255, A: 255}), pngOf(color.RGBA{B: 255, A: 255})

	up, err := env.c.UploadImage(ctx, "cat.png", "pets", bytes.NewReader(red), "image/png", false)
	require.NoError(t, err)
	require.Equal(t, &Upload{Name: "cat.png", Subfolder: "pets", Type: "input"}, up)

	up, err = env.c.UploadImage(ctx, "cat.png", "pets", bytes.NewReader(blue), "image/png", false)
	require.NoError(t, err)
	require.Equal(t, "cat (1).png", up.Name, "different content is not overwritten")

	up, err = env.c.UploadImage(ctx, "cat.png", "pets", bytes.NewReader(blue), "image/png", true)
	require.NoError(t, err)
	require.Equal(t, "cat.png", up.Name)

	_, err = env.c.UploadImage(ctx, "x.png", "", iotestErrReader{}, "image/png", true)
	require.ErrorContains(t, err, "read input")
	require.NotErrorIs(t, err, ErrUnavailable)

	// The upload is usable by LoadImage; PreviewImage writes to temp/,
	// which Files still lists.
	res, err := env.c.Run(ctx, []byte(`{
		"1": {"class_type": "LoadImage", "inputs": {"image": "pets/cat.png"}},
		"2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}`), RunOptions{})
	require.NoError(t, err)
	files := res.Files()
	require.Len(t, files, 1)
	require.Equal(t, "temp", files[0].Type)
	rc, err := env.c.View(ctx, files[0].FileRef)
	require.NoError(t, err)
	got, err := io.ReadAll(rc)
	require.NoError(t, rc.Close())
	require.NoError(t, err)
	img, err := png.Decode(bytes.NewReader(got))
	require.NoError(t, err)
	r, g, b, _ := img.At(1, 1).RGBA()
	require.Equal(t, []uint32{0, 0, 0xffff}, []uint32{r, g, b}, "the overwritten (blue) image was loaded")
}

type iotestErrReader struct{}

func (iotestErrReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

func TestIntrospection(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{Checkpoints: []string{"x.safetensors", "y.safetensors"}}, nil)
	ctx := testCtx(t)

	opts, err := env.c.InputOptions(ctx, "CheckpointLoaderSimple", "ckpt_name")
	require.NoError(t, err)
	require.Equal(t, []string{"x.safetensors", "y.safetensors"}, opts)

	infos, err := env.c.ObjectInfo(ctx, "")
	require.NoError(t, err)
	require.True(t, infos["SaveImage"].OutputNode)
	require.Contains(t, infos["KSampler"].Required, "seed")
	methods, ok := infos["SaveAnimatedWEBP"].Options("method")
	require.True(t, ok, "v3 COMBO inputs list their options")
	require.Equal(t, []string{"default", "fastest", "slowest"}, methods)

	infos, err = env.c.ObjectInfo(ctx, "NoSuchNode")
	require.NoError(t, err)
	require.Empty(t, infos)
	_, err = env.c.InputOptions(ctx, "KSampler", "steps")
	require.ErrorContains(t, err, "not a combo")

	st, err := env.c.SystemStats(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, st.Devices)
	require.NoError(t, env.c.Free(ctx, true, true))
	require.NoError(t, env.c.Interrupt(ctx, ""), "a global interrupt while idle does nothing")
	require.NoError(t, env.c.DeleteFromQueue(ctx, uuid.NewString()))
}

// An error of a request that got no answer names the request, never
// ComfyUI's address: such texts reach the job's submitter.
func TestTransportErrorsHideTheAddress(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	for _, base := range []string{"http://" + addr, "http://comfy-internal.invalid:" + port} {
		c, err := New(Config{BaseURL: base, RequestTimeout: 5 * time.Second, DialTimeout: time.Second})
		require.NoError(t, err)
		_, err = c.SystemStats(testCtx(t))
		require.ErrorIs(t, err, ErrUnavailable)
		require.Contains(t, err.Error(), "GET /system_stats: ")
		require.NotContains(t, err.Error(), port, base)
		require.NotContains(t, err.Error(), "127.0.0.1", base)
		require.NotContains(t, err.Error(), "comfy-internal", base)
		werr := c.Start(testCtx(t))
		require.Error(t, werr)
		require.NotContains(t, werr.Error(), port, base)
		require.NoError(t, c.Close())
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	t.Parallel()
	sim := simtest.Start(t, comfysim.Config{})
	ctx := testCtx(t)

	// Without Start.
	c, err := New(Config{BaseURL: sim.URL})
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.NoError(t, c.Close())
	require.ErrorIs(t, c.Start(ctx), ErrClosed)

	// Started, then closed from several goroutines at once.
	c, err = New(Config{BaseURL: sim.URL})
	require.NoError(t, err)
	require.NoError(t, c.Start(ctx))
	require.ErrorContains(t, c.Start(ctx), "already started")
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { require.NoError(t, c.Close()) })
	}
	wg.Wait()
	require.NoError(t, c.Close())
	_, err = c.Submit(ctx, txt2img(comfysim.DefaultCheckpoint, "1", 1), RunOptions{})
	require.ErrorIs(t, err, ErrClosed)
	_, err = c.Wait(ctx, uuid.NewString())
	require.ErrorIs(t, err, ErrClosed)
}

func TestCloseEndsWaiters(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{}, nil)
	ctx := testCtx(t)
	env.sim.SetFault(comfysim.Fault{HangAtStep: 2})

	onProgress, reached := onStep(1)
	errc := make(chan error, 1)
	go func() {
		_, err := env.c.Run(ctx, txt2img(comfysim.DefaultCheckpoint, "20", 3), RunOptions{OnProgress: onProgress})
		errc <- err
	}()
	receive(t, reached)
	require.NoError(t, env.c.Close())
	require.ErrorIs(t, receive(t, errc), ErrClosed)
	require.False(t, env.c.Connected())
}

func TestStartContextEndsLoop(t *testing.T) {
	t.Parallel()
	sim := simtest.Start(t, comfysim.Config{})
	c, err := New(Config{BaseURL: sim.URL, Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	require.NoError(t, c.Start(ctx))
	cancel()
	require.Eventually(t, func() bool {
		_, err := c.Submit(testCtx(t), txt2img(comfysim.DefaultCheckpoint, "1", 1), RunOptions{})
		return errors.Is(err, ErrClosed)
	}, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, c.Close())
}

func TestStartStopStress(t *testing.T) {
	t.Parallel()
	sim := simtest.Start(t, comfysim.Config{})
	ctx := testCtx(t)
	for range 20 {
		c, err := New(Config{BaseURL: sim.URL})
		require.NoError(t, err)
		require.NoError(t, c.Start(ctx))
		require.NoError(t, c.Close())
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "zero is fine", cfg: Config{}},
		{name: "bad scheme", cfg: Config{BaseURL: "ftp://x"}, wantErr: "BaseURL"},
		{name: "query", cfg: Config{BaseURL: "http://x/?a=1"}, wantErr: "BaseURL"},
		{name: "negative delay", cfg: Config{ReconnectDelay: -1}, wantErr: "ReconnectDelay"},
		{name: "read timeout below ping", cfg: Config{PingInterval: time.Second, ReadTimeout: time.Second}, wantErr: "ReadTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(tt.cfg)
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}

	c, err := New(Config{BaseURL: "https://proxy.example/comfy/"})
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.Equal(t, "wss://proxy.example/comfy/ws?clientId="+c.ClientID(), c.wsURL)
	require.Equal(t, "https://proxy.example/comfy/history/a%2Fb", c.endpoint("/history/a%2Fb", nil))
}
