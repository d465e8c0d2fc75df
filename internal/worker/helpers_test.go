package worker_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/proto"
)

// input builds a job input: the workflow's nodes (the members of the
// workflow object) and more top-level fields, each `"key": value`.
func input(nodes string, fields ...string) string {
	var b strings.Builder
	b.WriteString(`{"workflow":{` + nodes + `}`)
	for _, f := range fields {
		b.WriteString("," + f)
	}
	b.WriteString("}")
	return b.String()
}

// sampler is a txt2img graph up to VAEDecode (node "8" gives the IMAGE),
// with the given seed and steps.
func sampler(seed string, steps int) string {
	return fmt.Sprintf(`
	"4":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":"v1-5-pruned-emaonly.safetensors"}},
	"5":{"class_type":"EmptyLatentImage","inputs":{"width":64,"height":64,"batch_size":1}},
	"6":{"class_type":"CLIPTextEncode","inputs":{"text":"a cat","clip":["4",1]}},
	"7":{"class_type":"CLIPTextEncode","inputs":{"text":"blurry","clip":["4",1]}},
	"3":{"class_type":"KSampler","inputs":{"seed":%s,"steps":%d,"cfg":8,"sampler_name":"euler","scheduler":"normal","denoise":1,"model":["4",0],"positive":["6",0],"negative":["7",0],"latent_image":["5",0]}},
	"8":{"class_type":"VAEDecode","inputs":{"samples":["3",0],"vae":["4",2]}}`, seed, steps)
}

// save is a SaveImage node of node 8's image.
func save(id, prefix string) string {
	return fmt.Sprintf(`,"%s":{"class_type":"SaveImage","inputs":{"filename_prefix":%q,"images":["8",0]}}`, id, prefix)
}

// loadAndSave loads an input file and saves it again.
func loadAndSave(name, prefix string) string {
	return fmt.Sprintf(`"1":{"class_type":"LoadImage","inputs":{"image":%q}},
	"2":{"class_type":"SaveImage","inputs":{"filename_prefix":%q,"images":["1",0]}}`, name, prefix)
}

func pngBytes(t testing.TB, w, h int, c color.Color) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, c)
		}
	}
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, img))
	return buf.Bytes()
}

func b64(data []byte) string { return base64.StdEncoding.EncodeToString(data) }

// failure decodes a failed job's output.
func (b *bundle) failure(rec *proto.Record) proto.Failure {
	b.t.Helper()
	var f proto.Failure
	require.NoError(b.t, json.Unmarshal(rec.Output, &f), "output: %s", rec.Output)
	return f
}

// promptIDs lists the prompt ids the emulator accepted, in order.
func promptIDs(sim interface {
	Prompts() []comfysim.PromptRecord
}) []string {
	var ids []string
	for _, p := range sim.Prompts() {
		ids = append(ids, p.PromptID)
	}
	return ids
}

// getJSON fetches a URL and decodes its JSON body.
func getJSON(t testing.TB, url string) map[string]any {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(data, &m), "%s", data)
	return m
}

// storedPrompt is the workflow ComfyUI stored for a prompt (after its
// coercions), from /history.
func (b *bundle) storedPrompt(promptID string) map[string]any {
	b.t.Helper()
	h := getJSON(b.t, b.sim.URL+"/history/"+promptID)
	entry, ok := h[promptID].(map[string]any)
	require.True(b.t, ok, "no history for %s", promptID)
	return entry["prompt"].([]any)[2].(map[string]any)
}

// eventLog collects the raw events published for a job.
type eventLog struct {
	mu   sync.Mutex
	msgs [][]byte
}

// watch subscribes to a job's events and previews; call it before
// enqueuing.
func (b *bundle) watch(jobID string) *eventLog {
	b.t.Helper()
	l := &eventLog{}
	for _, subject := range []string{proto.JobEventSubjects(jobID), proto.PreviewSubject(jobID, proto.DefaultTenant)} {
		sub, err := b.nats.Conn.Subscribe(subject, func(m *nats.Msg) {
			l.mu.Lock()
			l.msgs = append(l.msgs, m.Data)
			l.mu.Unlock()
		})
		require.NoError(b.t, err)
		b.t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	require.NoError(b.t, b.nats.Conn.Flush())
	return l
}

// ofType returns the events of a type, decoded into maps.
func (l *eventLog) ofType(typ string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, m := range l.msgs {
		var ev map[string]any
		if json.Unmarshal(m, &ev) == nil && ev["type"] == typ {
			out = append(out, ev)
		}
	}
	return out
}

func (l *eventLog) raw() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(bytes.Join(l.msgs, []byte("\n")))
}

// eventually is require.Eventually with the package's bounds.
func eventually(t testing.TB, cond func() bool, msg string, args ...any) {
	t.Helper()
	require.Eventually(t, cond, 30*time.Second, 5*time.Millisecond, append([]any{msg}, args...)...)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// shmDir is a fresh directory on tmpfs (/dev/shm) when there is one, for
// emulators that write many files; removed at cleanup.
func shmDir(t testing.TB) string {
	t.Helper()
	if st, err := os.Stat("/dev/shm"); err != nil || !st.IsDir() {
		return t.TempDir()
	}
	dir, err := os.MkdirTemp("/dev/shm", "comfysim-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// quietLogger logs errors only, for tests that run many jobs.
func quietLogger(t testing.TB) *zap.Logger {
	return zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel))
}
