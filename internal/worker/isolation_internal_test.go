package worker

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFileRefProblem(t *testing.T) {
	t.Parallel()
	const job = "job-b"
	tests := []struct {
		name, val string
		want      string // a part of the reason; "" means allowed
	}{
		// Allowed: the job's own inputs, files shipped in the input folder,
		// and text that is not a path.
		{name: "shipped file", val: "example.png"},
		{name: "shipped file in a folder", val: "masks/face.png"},
		{name: "own input", val: "comfyfleet/job-b/1/in.png"},
		{name: "own input, annotated", val: "comfyfleet/job-b/2/in.png [input]"},
		{name: "own folder, odd spelling", val: "./comfyfleet//job-b/./1/in.png"},
		{name: "model in a folder", val: "SDXL/sd_xl_base_1.0.safetensors"},
		{name: "sampler name", val: "euler"},
		{name: "prompt", val: "a cat, trending on artstation, 8k... and/or a dog"},
		{name: "prompt with a leading slash", val: "/imagine a cat in the rain"},
		{name: "prompt with escaped parentheses", val: `1girl, \(artist\), v1.5`},
		{name: "prompt of several lines", val: "C:\\not\\a\\path.png\nsecond line"},
		{name: "filename prefix", val: "%date:yyyy-MM-dd%/ComfyUI"},
		{name: "url", val: "https://example.com/a.png"},
		{name: "ellipsis", val: "wait... what"},
		{name: "empty", val: ""},

		// Other jobs' files and the output and temp folders.
		{name: "another job's input", val: "comfyfleet/job-a/1/x.png", want: `"comfyfleet/job-a/1/x.png" is in another job's input folder (comfyfleet/job-a/)`},
		{name: "another job's input, annotated", val: "comfyfleet/job-a/1/x.png [input]", want: "another job's input folder"},
		{name: "another job's input, odd spelling", val: "./ComfyFleet//job-a/1/x.png", want: "another job's input folder"},
		{name: "a job id differing in case", val: "comfyfleet/JOB-B/1/x.png", want: "another job's input folder"},
		{name: "the jobs' folder itself", val: "comfyfleet", want: "outside this job's own folder (comfyfleet/job-b/)"},
		{name: "a file in the jobs' folder", val: "comfyfleet/x.png", want: "outside this job's own folder"},
		{name: "another job's input on Windows", val: `comfyfleet\job-a\1\x.png`, want: "another job's input folder"},
		{name: "an absolute path into the jobs' folder", val: "/comfyui/input/comfyfleet/job-a/1/my input", want: "another job's input folder"},
		{name: "an output", val: "ComfyUI_00001_.png [output]", want: `"ComfyUI_00001_.png [output]" names a file in ComfyUI's output folder ([output])`},
		{name: "an output, no space", val: "x.png[output]", want: "output folder"},
		{name: "a temp file", val: "ComfyUI_temp_abcde_00001_.png [temp]", want: "temp folder ([temp])"},

		// Paths that could leave the input folder.
		{name: "dot dot", val: "../output/ComfyUI_00001_.png", want: `has a ".." part`},
		{name: "dot dot inside", val: "comfyfleet/job-b/../job-a/1/x.png", want: `has a ".." part`},
		{name: "dot dot alone", val: "..", want: `has a ".." part`},
		{name: "dot dot on Windows", val: `..\secret.png`, want: `has a ".." part`},
		{name: "dot dot dot", val: "a/.../b.png", want: `has a ".." part`},
		{name: "dot dot in text of several lines", val: "x\n../../y", want: `has a ".." part`},
		{name: "absolute", val: "/etc/passwd", want: "is an absolute path"},
		{name: "absolute, one part", val: "/secret", want: "is an absolute path"},
		{name: "absolute with an extension", val: "/my secret.png", want: "is an absolute path"},
		{name: "absolute output", val: "/comfyui/output/ComfyUI_00001_.png", want: "is an absolute path"},
		{name: "windows drive", val: "C:/ComfyUI/output/x.png", want: "is an absolute path"},
		{name: "windows drive, backslash", val: `D:\x`, want: "is an absolute path"},
		{name: "unc", val: `\\server\share\x.png`, want: "is an absolute path"},
		{name: "backslash", val: `sub\x.png`, want: "contains a backslash"},
	}
	for _, tt := range tests {
		got := fileRefProblem(tt.val, job)
		if tt.want == "" {
			require.Empty(t, got, tt.name)
			continue
		}
		require.Contains(t, got, tt.want, tt.name)
	}
	long := strings.Repeat("é", 100) + " [output]"
	require.Contains(t, fileRefProblem(long, job), `…`, "a long value is shortened")
}

func TestCheckFileRefsMessage(t *testing.T) {
	t.Parallel()
	wf := `{"7":{"inputs":{"image":"comfyfleet/other/1/x.png","mask":["4",1]},"class_type":"LoadImage"},
	"8":{"class_type":"LoadImageOutput","inputs":{"image":"ComfyUI_00001_.png [output]"}},
	"9":{"class_type":"Custom","inputs":{"files":{"a":["ok.png","../x.png"]},"seed":18446744073709551615}},
	"10":{"class_type":"SaveImage","inputs":{"filename_prefix":"ComfyUI","images":["comfyfleet",0]}}}`
	err := checkFileRefs([]byte(wf), "mine")
	var f *failure
	require.ErrorAs(t, err, &f)
	require.Equal(t, "Workflow validation failed:\n"+
		`• Node 7 (errors): LoadImage input image: "comfyfleet/other/1/x.png" is in another job's input folder (comfyfleet/other/); a job may read only its own inputs`+"\n"+
		`• Node 8 (errors): LoadImageOutput input image: "ComfyUI_00001_.png [output]" names a file in ComfyUI's output folder ([output]); a workflow cannot read outputs: its own are named only while it runs, the others are other jobs'`+"\n"+
		`• Node 9 (errors): Custom input files: "../x.png" has a ".." part; name files without ".."`+"\n\n"+
		"On this worker a workflow may name only its own input files (the job's images) and the files shipped in ComfyUI's input folder.",
		f.msg, "a link's node id is not a file name")
	require.Empty(t, f.details)

	require.NoError(t, checkFileRefs([]byte(`{"1":{"class_type":"LoadImage","inputs":{"image":"comfyfleet/mine/1/a.png"}}}`), "mine"))
	var many strings.Builder
	many.WriteString("{")
	for i := range 25 {
		if i > 0 {
			many.WriteString(",")
		}
		many.WriteString(`"` + strings.Repeat("1", i+1) + `":{"inputs":{"image":"/etc/x.png"}}`)
	}
	many.WriteString("}")
	require.ErrorAs(t, checkFileRefs([]byte(many.String()), "mine"), &f)
	require.Equal(t, 21, strings.Count(f.msg, "\n• "), "at most 20 lines, then how many more")
	require.Contains(t, f.msg, "• … and 5 more")
	require.ErrorAs(t, checkFileRefs([]byte(`{"1":{"inputs":{"image":"a.png"`), "mine"), &f)
	require.Equal(t, "Invalid workflow: workflow is not valid JSON", f.msg)
}

func TestRemoveAttemptFolder(t *testing.T) {
	t.Parallel()
	in := t.TempDir()
	outside := t.TempDir()
	write := func(p string) {
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte("x"), 0o644))
	}
	write(filepath.Join(in, "comfyfleet", "j1", "1", "a.png"))
	write(filepath.Join(in, "comfyfleet", "j1", "1", "sub", "b.png"))
	write(filepath.Join(in, "comfyfleet", "j1", "2", "a.png"))
	write(filepath.Join(outside, "keep.png"))
	require.NoError(t, os.Symlink(outside, filepath.Join(in, "comfyfleet", "j1", "1", "link")))

	require.NoError(t, removeAttemptFolder(in, "j1", 1))
	require.NoDirExists(t, filepath.Join(in, "comfyfleet", "j1", "1"))
	require.FileExists(t, filepath.Join(in, "comfyfleet", "j1", "2", "a.png"), "another attempt's files stay")
	require.FileExists(t, filepath.Join(outside, "keep.png"), "a link is removed, not followed")
	require.NoError(t, removeAttemptFolder(in, "j1", 2))
	require.NoDirExists(t, filepath.Join(in, "comfyfleet", "j1"), "the job's folder goes with its last attempt")
	require.DirExists(t, filepath.Join(in, "comfyfleet"))

	require.ErrorIs(t, removeAttemptFolder(in, "j1", 3), os.ErrNotExist)
	require.ErrorContains(t, removeAttemptFolder(in, "../x", 1), "job id")

	// A job folder, or the jobs' folder, that is a link is left alone.
	write(filepath.Join(outside, "1", "victim.png"))
	require.NoError(t, os.Symlink(outside, filepath.Join(in, "comfyfleet", "j2")))
	require.ErrorContains(t, removeAttemptFolder(in, "j2", 1), "not a folder")
	require.FileExists(t, filepath.Join(outside, "1", "victim.png"))
	in2 := t.TempDir()
	require.NoError(t, os.Symlink(outside, filepath.Join(in2, "comfyfleet")))
	write(filepath.Join(outside, "j3", "1", "victim.png"))
	require.ErrorContains(t, removeAttemptFolder(in2, "j3", 1), "not a folder")
	require.FileExists(t, filepath.Join(outside, "j3", "1", "victim.png"))
}

// BenchmarkCheckFileRefs is the check's cost on every job: the example
// workflow.
func BenchmarkCheckFileRefs(b *testing.B) {
	data, err := os.ReadFile("../../examples/txt2img.json")
	require.NoError(b, err)
	var in struct {
		Input struct {
			Workflow json.RawMessage `json:"workflow"`
		} `json:"input"`
	}
	require.NoError(b, json.Unmarshal(data, &in))
	b.ReportAllocs()
	for b.Loop() {
		if err := checkFileRefs(in.Input.Workflow, "job"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRewriteInputRefs is the worker's rewrite of a workflow's image
// references to the job's input folder, on a workflow of 40 nodes with
// two LoadImage inputs, done once per attempt before the prompt is queued.
func BenchmarkRewriteInputRefs(b *testing.B) {
	var wf strings.Builder
	wf.WriteString(`{`)
	for i := range 40 {
		if i > 0 {
			wf.WriteString(`,`)
		}
		switch i {
		case 3, 17:
			fmt.Fprintf(&wf, `"%d":{"class_type":"LoadImage","inputs":{"image":"in%d.png","upload":"image"}}`, i, i)
		default:
			fmt.Fprintf(&wf, `"%d":{"class_type":"KSampler","inputs":{"seed":%d,"steps":20,"cfg":7.5,"model":["4",0],"positive":["6",0],"text":"a cat, highly detailed"}}`, i, i)
		}
	}
	wf.WriteString(`}`)
	data := []byte(wf.String())
	repl := map[string]string{"in3.png": "comfyfleet/job/1/in3.png", "in17.png": "comfyfleet/job/1/in17.png"}
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for range b.N {
		if _, n, err := rewriteInputRefs(data, repl); err != nil || n != 2 {
			b.Fatalf("rewrote %d: %v", n, err)
		}
	}
}
