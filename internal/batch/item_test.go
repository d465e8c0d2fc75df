package batch_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/batch"
	"github.com/comfyfleet/comfyfleet/proto"
)

const apiWorkflow = `{"3":{"class_type":"KSampler","inputs":{"seed":18446744073709551615}},"9":{"class_type":"SaveImage","inputs":{"images":["8",0]}}}`

func TestDecodeItem(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		data    string
		check   func(t *testing.T, it batch.Item)
		wantErr string
	}{
		{name: "bare workflow", data: apiWorkflow, check: func(t *testing.T, it batch.Item) {
			require.Equal(t, `{"workflow":`+apiWorkflow+`}`, string(it.Input))
		}},
		{name: "RunPod input", data: `{"workflow": ` + apiWorkflow + `, "images": [{"name": "a.png", "image": "AA=="}]}`, check: func(t *testing.T, it batch.Item) {
			in, err := proto.DecodeInput(it.Input)
			require.NoError(t, err)
			require.Len(t, in.Images, 1)
			require.Contains(t, string(it.Input), "18446744073709551615")
		}},
		{name: "RunPod request", data: `{"input":{"workflow":` + apiWorkflow + `},"webhook":"https://h","policy":{"ttl":5000,"lowPriority":true},"s3Config":{"accessId":"a","accessSecret":"s","bucketName":"b","endpointUrl":"e"},"name":"my/item"}`,
			check: func(t *testing.T, it batch.Item) {
				require.Equal(t, "https://h", it.Webhook)
				require.Equal(t, &proto.Policy{TTL: 5000, LowPriority: true}, it.Policy)
				require.Equal(t, "b", it.S3Config.BucketName)
				require.Equal(t, "my_item", it.Name)
			}},
		{name: "RunPod input with a name", data: `{"name":"owl","workflow":` + apiWorkflow + `,"images":[{"name":"a.png","image":"AA=="}]}`,
			check: func(t *testing.T, it batch.Item) {
				require.Equal(t, "owl", it.Name)
				require.Equal(t, `{"images":[{"name":"a.png","image":"AA=="}],"workflow":`+apiWorkflow+`}`, string(it.Input),
					"the name is not sent with the job; the workflow keeps its digits")
			}},
		{name: "empty name", data: `{"name":" ","workflow":{}}`, check: func(t *testing.T, it batch.Item) {
			require.Empty(t, it.Name)
			require.Equal(t, `{"workflow":{}}`, string(it.Input))
		}},
		{name: "name not a string", data: `{"name":7,"workflow":{}}`, wantErr: "x.json: name must be a string"},
		{name: "request name not a string", data: `{"name":["a"],"input":{"workflow":{}}}`, wantErr: "x.json: name must be a string"},
		{name: "input as a string", data: `{"input":"{\"workflow\":{\"1\":{}}}"}`, check: func(t *testing.T, it batch.Item) {
			require.Equal(t, `{"workflow":{"1":{}}}`, string(it.Input))
		}},
		{name: "request with a file webhook", data: `{"input":{"workflow":` + apiWorkflow + `},"webhook":"file:///etc/passwd"}`, wantErr: `x.json: webhook has the scheme "file"`},
		{name: "request with a far ttl", data: `{"input":{"workflow":` + apiWorkflow + `},"policy":{"ttl":9000000000000000}}`, wantErr: "x.json: policy.ttl: 9000000000000000 ms is more than the limit of 604800000 ms (7 days)"},
		{name: "UI format", data: `{"nodes":[],"links":[]}`, wantErr: "UI format; export it in API format"},
		{name: "not an object", data: `[1]`, wantErr: "x.json: not a JSON object"},
		{name: "null", data: `null`, wantErr: "not a JSON object"},
		{name: "request without workflow", data: `{"input":{"images":[]}}`, wantErr: "x.json: " + proto.ErrMsgNoWorkflow},
		{name: "bad images", data: `{"workflow":{},"images":[{"name":"a"}]}`, wantErr: proto.ErrMsgImagesInvalid},
		{name: "bad policy", data: `{"input":{"workflow":{}},"policy":{"ttl":"x"}}`, wantErr: "policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			it, err := batch.DecodeItem([]byte(tt.data), "x.json")
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			tt.check(t, it)
		})
	}
}

func TestReadJSONL(t *testing.T) {
	t.Parallel()
	lines := make([]string, 0, 12)
	for i := range 11 {
		if i == 3 {
			lines = append(lines, "") // blank lines are skipped but counted
			continue
		}
		lines = append(lines, `{"input":{"workflow":`+apiWorkflow+`}}`)
	}
	lines = append(lines, `{"name":"last","input":{"workflow":{}}}`, `{"name":"owl","workflow":{}}`)
	items, err := batch.ReadJSONL(strings.NewReader(strings.Join(lines, "\n")), "in.jsonl")
	require.NoError(t, err)
	require.Len(t, items, 12)
	require.Equal(t, "line-0001", items[0].Name)
	require.Equal(t, "line-0005", items[3].Name)
	require.Equal(t, "in.jsonl:5", items[3].Origin)
	require.Equal(t, "last", items[10].Name)
	require.Equal(t, "owl", items[11].Name, "a RunPod input's name")
	require.Equal(t, `{"workflow":{}}`, string(items[11].Input))

	// Lines added at the end leave the names of the others alone.
	more, err := batch.ReadJSONL(strings.NewReader(strings.Join(append(lines, make([]string, 90)...), "\n")+"\n"+apiWorkflow), "in.jsonl")
	require.NoError(t, err)
	require.Equal(t, "line-0001", more[0].Name)
	require.Equal(t, "line-0104", more[12].Name)

	_, err = batch.ReadJSONL(strings.NewReader("{\"workflow\":{}}\n{\"input\":{}}\n"), "in.jsonl")
	require.ErrorContains(t, err, "in.jsonl:2: "+proto.ErrMsgNoWorkflow)
}

func TestLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	folder := filepath.Join(dir, "wfs")
	require.NoError(t, os.Mkdir(folder, 0o755))
	for _, n := range []string{"b.json", "a.json", "notes.txt"} {
		require.NoError(t, os.WriteFile(filepath.Join(folder, n), []byte(apiWorkflow), 0o644))
	}
	require.NoError(t, os.Mkdir(filepath.Join(folder, "sub.json"), 0o755))
	items, err := batch.Load(folder, nil)
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b"}, []string{items[0].Name, items[1].Name})
	require.Equal(t, []int{0, 1}, []int{items[0].Index, items[1].Index})

	seeds, err := batch.ParseSet("3.inputs.seed=7..8", nil)
	require.NoError(t, err)
	items, err = batch.Load(folder, []batch.Set{seeds})
	require.NoError(t, err)
	require.Equal(t, "a_seed-7 a_seed-8 b_seed-7 b_seed-8", items[0].Name+" "+items[1].Name+" "+items[2].Name+" "+items[3].Name)

	one := filepath.Join(dir, "wf.json")
	require.NoError(t, os.WriteFile(one, []byte(`{"input":{"workflow":`+apiWorkflow+`}}`), 0o644))
	items, err = batch.Load(one, []batch.Set{seeds})
	require.NoError(t, err)
	require.Equal(t, "seed-7", items[0].Name)
	require.Equal(t, json.RawMessage("8"), items[1].Params["3.inputs.seed"])
	items, err = batch.Load(one, nil)
	require.NoError(t, err)
	require.Equal(t, "001", items[0].Name)

	jsonl := filepath.Join(dir, "in.jsonl")
	require.NoError(t, os.WriteFile(jsonl, []byte(apiWorkflow+"\n"+apiWorkflow+"\n"), 0o644))
	items, err = batch.Load(jsonl, nil)
	require.NoError(t, err)
	require.Len(t, items, 2)
	// A one-line JSONL file's items carry the line: a second line later
	// renames nothing.
	require.NoError(t, os.WriteFile(jsonl, []byte(`{"name":"owl","workflow":`+apiWorkflow+"}\n"), 0o644))
	items, err = batch.Load(jsonl, []batch.Set{seeds})
	require.NoError(t, err)
	require.Equal(t, "owl_seed-7", items[0].Name)

	_, err = batch.Load(filepath.Join(dir, "missing.json"), nil)
	require.ErrorContains(t, err, "no such file")
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.Mkdir(empty, 0o755))
	_, err = batch.Load(empty, nil)
	require.ErrorContains(t, err, "has no .json workflow")
}

func TestNamesMustBeUnique(t *testing.T) {
	t.Parallel()
	_, err := batch.ReadJSONL(strings.NewReader(`{"name":"x","input":{"workflow":{}}}`+"\n"+`{"name":"x","input":{"workflow":{}}}`), "in.jsonl")
	require.NoError(t, err)
	items, _ := batch.ReadJSONL(strings.NewReader(`{"name":"x","input":{"workflow":{}}}`+"\n"+`{"name":"x","input":{"workflow":{}}}`), "in.jsonl")
	_, err = batch.Expand(items, nil, false)
	require.ErrorContains(t, err, `two items are named "x" (in.jsonl:1 and in.jsonl:2)`)
}

func TestSafeName(t *testing.T) {
	t.Parallel()
	require.Equal(t, "a_b_c.png", batch.SafeName("a/b c.png"))
	require.Equal(t, "passwd", batch.SafeName("../passwd")[1:])
	require.Equal(t, "item", batch.SafeName(".."))
	require.Len(t, batch.SafeName(strings.Repeat("x", 200)), 80)
}

func TestJobIDs(t *testing.T) {
	t.Parallel()
	it := batch.Item{Name: "001.v2", Input: json.RawMessage(`{"workflow":{}}`)}
	id := batch.JobID("sweep-1", it)
	require.NoError(t, proto.ValidID(id))
	require.Equal(t, id, batch.JobID("sweep-1", it), "deterministic")
	require.True(t, strings.HasPrefix(id, "sweep-1-001_v2-"))
	other := it
	other.Input = json.RawMessage(`{"workflow":{"1":{}}}`)
	require.NotEqual(t, id, batch.JobID("sweep-1", other), "a changed input is a new job")
	require.NotEqual(t, id, batch.JobID("sweep-2", it))
	long := batch.Item{Name: strings.Repeat("n", 80), Input: it.Input}
	require.NoError(t, proto.ValidID(batch.JobID(strings.Repeat("b", batch.MaxBatchIDLen), long)))

	retry := batch.AttemptID(id, 2)
	require.Equal(t, id+"-r2", retry)
	require.Equal(t, id, batch.AttemptID(id, 1), "the first try is the item's job")
	require.NoError(t, proto.ValidID(batch.AttemptID(batch.JobID(strings.Repeat("b", batch.MaxBatchIDLen), long), 99999)),
		"the longest id with a retry stays a valid id")

	b := batch.DefaultBatchID("examples/txt2img.json")
	require.NoError(t, batch.ValidBatchID(b))
	require.Equal(t, b, batch.DefaultBatchID("./examples/../examples/txt2img.json"), "the same file, the same batch")
	require.NotEqual(t, b, batch.DefaultBatchID("examples/other/txt2img.json"))
	require.True(t, strings.HasPrefix(b, "txt2img-"), b)
	require.Error(t, batch.ValidBatchID("a.b"))
	require.Error(t, batch.ValidBatchID(strings.Repeat("b", batch.MaxBatchIDLen+1)))
}

func FuzzDecodeItem(f *testing.F) {
	f.Add([]byte(apiWorkflow))
	f.Add([]byte(`{"input":{"workflow":{}},"webhook":"x","policy":{"ttl":1},"name":"n"}`))
	f.Add([]byte(`{"workflow":{},"images":[{"name":"a.png","image":"AA=="}]}`))
	f.Add([]byte(`{"input":"{\"workflow\":{}}"}`))
	f.Add([]byte(`{"name":"owl","workflow":{"3":{"inputs":{"seed":18446744073709551615}}}}`))
	f.Add([]byte(`{"name":null,"workflow":{}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		it, err := batch.DecodeItem(data, "f")
		if err != nil {
			return
		}
		if _, err := proto.DecodeInput(it.Input); err != nil {
			t.Fatalf("accepted an input the dispatcher refuses: %v", err)
		}
	})
}

func FuzzReadJSONL(f *testing.F) {
	f.Add([]byte(apiWorkflow + "\n\n" + `{"name":"x","input":{"workflow":{}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		items, err := batch.ReadJSONL(strings.NewReader(string(data)), "f")
		if err != nil {
			return
		}
		for _, it := range items {
			if it.Name == "" || strings.ContainsAny(it.Name, "/\\") || strings.HasPrefix(it.Name, ".") {
				t.Fatalf("unsafe name %q", it.Name)
			}
		}
	})
}
