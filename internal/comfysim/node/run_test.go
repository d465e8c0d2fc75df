package node_test

import (
	"bytes"
	"errors"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/node"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// fakeExec is an executor that saves into dir and records what nodes ask.
type fakeExec struct {
	dir      string
	previews bool
	failAt   int // AtStep fails at this step (0: never)

	slept   []time.Duration
	steps   []int
	updates []string // "value/total preview-bytes"
	saved   []int64
}

var (
	_       node.Executor    = (*fakeExec)(nil)
	_       node.ProgressBar = (*fakeBar)(nil)
	errStep                  = errors.New("step fault")
)

func (e *fakeExec) Sleep(d time.Duration) error { e.slept = append(e.slept, d); return nil }
func (e *fakeExec) StepDelay() time.Duration    { return time.Millisecond }
func (e *fakeExec) Previews() bool              { return e.previews }

func (e *fakeExec) AtStep(step int) error {
	e.steps = append(e.steps, step)
	if step == e.failAt {
		return errStep
	}
	return nil
}

func (e *fakeExec) ProgressBar(total int, _ bool) node.ProgressBar { return &fakeBar{e, total} }

func (e *fakeExec) SaveImagePath(folderType, prefix string, _, _ int, _ string) (node.SavePath, error) {
	folder := filepath.Join(e.dir, folderType)
	if err := os.MkdirAll(folder, 0o755); err != nil {
		return node.SavePath{}, err
	}
	return node.SavePath{Folder: folder, Filename: prefix, Prefix: prefix, Counter: 1}, nil
}

func (e *fakeExec) WriteFile(path string, data []byte) error { return os.WriteFile(path, data, 0o644) }
func (e *fakeExec) Saved(_ node.SavePath, next int64)        { e.saved = append(e.saved, next) }
func (e *fakeExec) ProgressText(string) error                { return nil }

type fakeBar struct {
	e     *fakeExec
	total int
}

func (b *fakeBar) Update(value int, preview func() []byte) error {
	n := 0
	if preview != nil {
		n = len(preview())
	}
	b.e.updates = append(b.e.updates, fmt.Sprintf("%d/%d %v", value, b.total, n > 0))
	return nil
}

// runner runs the nodes of one prompt by hand, as the executor would.
type runner struct {
	t    *testing.T
	reg  *node.Registry
	exec *fakeExec
}

func (r runner) run(class string, inputs map[string]any) ([]any, *pyvalue.Dict, error) {
	c := r.reg.Class(class)
	require.NotNil(r.t, c, class)
	return c.Func(&node.Run{Class: c, ID: "1", Inputs: inputs, Prompt: pyvalue.NewDict("1", pyvalue.NewDict()),
		Object: c.NewObject(), Host: newHost(), Exec: r.exec})
}

func (r runner) must(class string, inputs map[string]any) []any {
	out, _, err := r.run(class, inputs)
	require.NoError(r.t, err, class)
	return out
}

func TestTxt2ImgThroughTheSeam(t *testing.T) {
	t.Parallel()
	exec := &fakeExec{dir: t.TempDir(), previews: true}
	r := runner{t: t, reg: node.NewRegistry(), exec: exec}
	ckpt := r.must("CheckpointLoaderSimple", map[string]any{"ckpt_name": "a.safetensors"})
	lat := r.must("EmptyLatentImage", map[string]any{"width": bigInt(24), "height": bigInt(16), "batch_size": bigInt(2)})
	cond := r.must("CLIPTextEncode", map[string]any{"text": "a cat", "clip": ckpt[1]})
	sampled := r.must("KSampler", map[string]any{"model": ckpt[0], "positive": cond[0], "negative": cond[0], "latent_image": lat[0],
		"seed": bigInt(1), "steps": bigInt(3), "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0})
	require.Equal(t, []int{1, 2, 3}, exec.steps)
	require.Equal(t, []time.Duration{time.Millisecond, time.Millisecond, time.Millisecond}, exec.slept)
	require.Equal(t, []string{"1/3 true", "2/3 true", "3/3 true"}, exec.updates)
	img := r.must("VAEDecode", map[string]any{"samples": sampled[0], "vae": ckpt[2]})

	_, ui, err := r.run("SaveImage", map[string]any{"images": img[0], "filename_prefix": "out"})
	require.NoError(t, err)
	require.Equal(t, `{"images": [{"filename": "out_00001_.png", "subfolder": "", "type": "output"}, {"filename": "out_00002_.png", "subfolder": "", "type": "output"}]}`,
		string(pyvalue.Encode(ui)))
	require.Equal(t, []int64{3}, exec.saved, "the next counter")
	data, err := os.ReadFile(filepath.Join(exec.dir, "output", "out_00001_.png"))
	require.NoError(t, err)
	pic, err := png.Decode(bytes.NewReader(data))
	require.NoError(t, err)
	require.Equal(t, 24, pic.Bounds().Dx())
	require.Contains(t, string(data), "tEXtprompt\x00{\"1\": {}}")

	// PreviewImage saves to temp/ with its object's random suffix.
	_, ui, err = r.run("PreviewImage", map[string]any{"images": img[0]})
	require.NoError(t, err)
	images, _ := ui.Get("images")
	first := images.([]any)[0].(*pyvalue.Dict)
	name, _ := first.Get("filename")
	typ, _ := first.Get("type")
	require.Regexp(t, `^ComfyUI_temp_[a-z]{5}_00001_\.png$`, name)
	require.Equal(t, "temp", typ)
}

func TestNodeErrors(t *testing.T) {
	t.Parallel()
	exec := &fakeExec{dir: t.TempDir(), failAt: 2}
	r := runner{t: t, reg: node.NewRegistry(), exec: exec}
	ckpt := r.must("CheckpointLoaderSimple", map[string]any{"ckpt_name": "a.safetensors"})
	lat := r.must("EmptyLatentImage", map[string]any{"width": bigInt(8), "height": bigInt(8), "batch_size": bigInt(1)})

	// The executor's error at a step ends the sampler as it is.
	_, _, err := r.run("KSampler", map[string]any{"model": ckpt[0], "latent_image": lat[0], "steps": bigInt(4)})
	require.ErrorIs(t, err, errStep)
	require.Equal(t, []int{1, 2}, exec.steps)
	require.Equal(t, []string{"1/4 false"}, exec.updates, "no previews asked for; step 2 failed before its tick")

	tests := []struct {
		name    string
		class   string
		inputs  map[string]any
		wantErr node.Error
	}{
		{name: "linked None model", class: "KSampler", inputs: map[string]any{"latent_image": lat[0]},
			wantErr: node.Error{Type: "AttributeError", Message: "'NoneType' object has no attribute 'load_device'"}},
		{name: "unknown checkpoint", class: "CheckpointLoaderSimple", inputs: map[string]any{"ckpt_name": "b.safetensors"},
			wantErr: node.Error{Type: "FileNotFoundError", Message: "Model in folder 'checkpoints' with filename 'b.safetensors' not found."}},
		{name: "huge batch", class: "KSampler", inputs: map[string]any{"model": ckpt[0],
			"latent_image": r.must("EmptyLatentImage", map[string]any{"width": bigInt(16384), "height": bigInt(16384), "batch_size": bigInt(2)})[0]},
			wantErr: node.Error{Type: "torch.OutOfMemoryError", Message: node.DefaultOOMMessage}},
		{name: "no images", class: "SaveImage", inputs: map[string]any{"filename_prefix": "x"},
			wantErr: node.Error{Type: "TypeError", Message: "'NoneType' object is not subscriptable"}},
	}
	for _, tt := range tests {
		_, _, err := r.run(tt.class, tt.inputs)
		var ne *node.Error
		require.ErrorAs(t, err, &ne, tt.name)
		require.Equal(t, tt.wantErr.Type, ne.Type, tt.name)
		require.Equal(t, tt.wantErr.Message, ne.Message, tt.name)
		require.Contains(t, ne.Traceback[len(ne.Traceback)-1], r.reg.Class(tt.class).FuncName(), tt.name)
	}
}
