package trace_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/simtest"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/trace"
)

// exception is a field where the emulator differs from the real ComfyUI on
// purpose: in the traces of Scenario ("" = every trace), the values at paths
// matching Path are not compared.
type exception struct {
	Scenario string
	Path     *regexp.Regexp
	Why      string
}

// exceptions are the differences the emulator has on purpose, each with
// its reason.
var exceptions = []exception{
	{"", regexp.MustCompile(`\.content_type$`),
		"aiohttp adds '; charset=utf-8' to JSON and names empty bodies application/octet-stream; clients read the body, not the header"},
	{"", regexp.MustCompile(`\.prompt\[4\]|json\.queue_(running|pending)\[\d+\]\[4\]`),
		"outputs_to_execute is the order of a Python set of node ids (hash-seeded per process); the emulator lists them in prompt order"},
	{"", regexp.MustCompile(`\.current_outputs$|\.current_outputs\[`),
		"current_outputs is a Python set's order too"},
	{"", regexp.MustCompile(`\.traceback(\[|$)`),
		"tracebacks name the install's paths, line numbers and torch internals; the emulator's are a stand-in of the same shape"},
	{"", regexp.MustCompile(`\.current_inputs\.[a-z_]+\[0\]$`),
		"tensors are printed by torch; the emulator holds no tensors for generated values and prints a stand-in of the same shape"},
	{"", regexp.MustCompile(`\.binary\.length$`),
		"preview JPEGs come from PIL's encoder; the picture's format and size are compared"},
	{"validation", regexp.MustCompile(`steps\[(6|7)\]\.response\.json\.error\.`),
		"version: 0.8.0 answers invalid_prompt without extra_info for a node without class_type or of an unknown class; the emulator follows the later ComfyUI it models (missing_node_type with node_id, class_type, node_title), which the worker's messages rely on"},
	{"object_info", regexp.MustCompile(`\.(is_input_list|search_aliases|essentials_category|has_intermediate_output|dev_only|price_badge)$`),
		"version: fields of the later ComfyUI the emulator models, which 0.8.0 does not send"},
	{"object_info", regexp.MustCompile(`json\.(SaveImage|PreviewImage|SaveAnimatedWEBP|CreateVideo|SaveVideo|SaveWEBM|PreviewAny)\.(output|output_is_list|output_name|output_tooltips|category|display_name)$`),
		"version: these schemas follow the later ComfyUI the emulator models (savers that return their input, v3 categories and display names)"},
	{"object_info", regexp.MustCompile(`json\.CreateVideo\.(input\.optional\.bit_depth|input_order\.optional)$`),
		"version: CreateVideo's bit_depth is newer than 0.8.0"},
	{"object_info", regexp.MustCompile(`json\.LoadImage\.input\.required\.image\[0\]$`),
		"the options are the files in input/, which differ between the recording server (after other scenarios) and a fresh emulator"},
	{"image_ops", regexp.MustCompile(`^steps\[3\]\.frames`),
		"a prompt of many outputs runs them in a Python set's order, so its frame order is the recording process's; the history's outputs and the files are compared"},
	{"feature_flags", regexp.MustCompile(`\.(assets|node_replacements)$`),
		"version: server features of the later ComfyUI the emulator models"},
	{"image_ops", regexp.MustCompile(`outputs\.21\.text\[0\]$`),
		"str() of a Python object names its module's file and address"},
}

// pixelTolerance is the rounding two float pipelines may differ by, per
// 8-bit channel.
const pixelTolerance = 2

// TestReplayTraces plays every committed trace's requests against a fresh
// emulator and compares the answers and the frames with what the real
// ComfyUI did.
func TestReplayTraces(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join("..", "testdata", "traces", "*.json"))
	require.NoError(t, err)
	require.NotEmpty(t, files, "no traces: record them with go run ./internal/comfysim/tracerec")
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		tr, err := trace.Decode(data)
		require.NoError(t, err, f)
		t.Run(tr.Scenario, func(t *testing.T) {
			t.Parallel()
			sim := simtest.Start(t, comfysim.Config{})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			got, err := trace.Play(ctx, sim.URL, tr.Steps)
			require.NoError(t, err, "%s recorded from ComfyUI %s (%s)", tr.Scenario, tr.ComfyUI.Version, tr.ComfyUI.Commit)
			var diffs []string
			for k := range tr.Steps {
				diffs = append(diffs, compareStep(tr.Scenario, fmt.Sprintf("steps[%d]", k), tr.Steps[k], got[k])...)
			}
			if len(diffs) > 0 {
				t.Errorf("the emulator differs from ComfyUI %s (%s) in %d places:\n%s", tr.ComfyUI.Version, tr.ComfyUI.Commit,
					len(diffs), strings.Join(diffs, "\n"))
			}
		})
	}
}

func compareStep(scenario, path string, want, got trace.Step) []string {
	var d differ
	d.scenario = scenario
	d.compare(path+".response", generic(want.Response), generic(got.Response))
	wf, gf := generic(want.Frames), generic(got.Frames)
	wl, _ := wf.([]any)
	gl, _ := gf.([]any)
	if len(wl) != len(gl) {
		d.add(path+".frames", fmt.Sprintf("%d frames, want %d:\n    got  %s\n    want %s", len(gl), len(wl), types(gl), types(wl)))
		return d.out
	}
	d.compare(path+".frames", wf, gf)
	return d.out
}

func types(fs []any) string {
	var ts []string
	for _, f := range fs {
		m, _ := f.(map[string]any)
		ts = append(ts, fmt.Sprint(m["type"]))
	}
	return strings.Join(ts, " ")
}

// generic is v as decoded JSON (maps, lists, json.Number), so both sides
// compare alike.
func generic(v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var out any
	if err := dec.Decode(&out); err != nil {
		panic(err)
	}
	return out
}

type differ struct {
	scenario string
	out      []string
}

func (d *differ) add(path, msg string) {
	for _, e := range exceptions {
		if (e.Scenario == "" || e.Scenario == d.scenario) && e.Path.MatchString(path) {
			return
		}
	}
	d.out = append(d.out, "  "+path+": "+msg)
}

func short(v any) string {
	b, _ := json.Marshal(v)
	s := string(b)
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

func (d *differ) compare(path string, want, got any) {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			d.add(path, fmt.Sprintf("got %s, want %s", short(got), short(want)))
			return
		}
		keys := map[string]bool{}
		for k := range w {
			keys[k] = true
		}
		for k := range g {
			keys[k] = true
		}
		var ks []string
		for k := range keys {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		for _, k := range ks {
			wv, wok := w[k]
			gv, gok := g[k]
			p := path + "." + k
			switch {
			case !gok:
				d.add(p, "missing, want "+short(wv))
			case !wok:
				d.add(p, "extra: "+short(gv))
			case k == "pixels":
				d.comparePixels(p, wv, gv)
			default:
				d.compare(p, wv, gv)
			}
		}
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			d.add(path, fmt.Sprintf("got %s, want %s", short(got), short(want)))
			return
		}
		for k := range w {
			d.compare(fmt.Sprintf("%s[%d]", path, k), w[k], g[k])
		}
	default:
		if fmt.Sprintf("%T %v", want, want) != fmt.Sprintf("%T %v", got, got) {
			d.add(path, fmt.Sprintf("got %s, want %s", short(got), short(want)))
		}
	}
}

func (d *differ) comparePixels(path string, want, got any) {
	ws, _ := want.(string)
	gs, _ := got.(string)
	wb, _ := base64.StdEncoding.DecodeString(ws)
	gb, _ := base64.StdEncoding.DecodeString(gs)
	if len(wb) != len(gb) {
		d.add(path, fmt.Sprintf("%d bytes, want %d", len(gb), len(wb)))
		return
	}
	worst, at := 0, 0
	for k := range wb {
		if diff := int(wb[k]) - int(gb[k]); diff > worst || -diff > worst {
			worst, at = max(diff, -diff), k
		}
	}
	if worst > pixelTolerance {
		d.add(path, fmt.Sprintf("byte %d (pixel %d, channel %d) is %d, want %d (off by %d)", at, at/4, at%4, gb[at], wb[at], worst))
	}
}
