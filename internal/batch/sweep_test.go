package batch_test

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/batch"
	"github.com/comfyfleet/comfyfleet/proto"
)

const wf = `{"workflow":{"3":{"class_type":"KSampler","inputs":{"seed":18446744073709551615,"cfg":7.50,"steps":20,"model":["4",0]}},` +
	`"6":{"class_type":"CLIPTextEncode","inputs":{"text":"a lighthouse","clip":["4",1]}},` +
	`"9":{"class_type":"SaveImage","inputs":{"filename_prefix":"ComfyUI","images":["8",0]}}}}`

func files(m map[string]string) func(string) ([]byte, error) {
	return func(name string) ([]byte, error) {
		if v, ok := m[name]; ok {
			return []byte(v), nil
		}
		return nil, os.ErrNotExist
	}
}

func TestParseSet(t *testing.T) {
	t.Parallel()
	read := files(map[string]string{"p.txt": "a cat\n\n  a dog, running \r\n", "empty.txt": "\n \n"})
	tests := []struct {
		name    string
		spec    string
		path    []string
		values  []batch.Value
		wantErr string
	}{
		{name: "range", spec: "3.inputs.seed=1..3", path: []string{"3", "inputs", "seed"},
			values: []batch.Value{{Text: "1", JSON: true}, {Text: "2", JSON: true}, {Text: "3", JSON: true}}},
		{name: "range past 2^64", spec: "3.inputs.seed=18446744073709551614..18446744073709551616", path: []string{"3", "inputs", "seed"},
			values: []batch.Value{{Text: "18446744073709551614", JSON: true}, {Text: "18446744073709551615", JSON: true}, {Text: "18446744073709551616", JSON: true}}},
		{name: "negative range", spec: "a.b=-1..0", path: []string{"a", "b"}, values: []batch.Value{{Text: "-1", JSON: true}, {Text: "0", JSON: true}}},
		{name: "file", spec: "6.inputs.text=@p.txt", path: []string{"6", "inputs", "text"},
			values: []batch.Value{{Text: "a cat"}, {Text: "a dog, running"}}},
		{name: "json array", spec: `3.inputs.cfg=[5, 7.5, "8"]`, path: []string{"3", "inputs", "cfg"},
			values: []batch.Value{{Text: "5", JSON: true}, {Text: "7.5", JSON: true}, {Text: `"8"`, JSON: true}}},
		{name: "literal with commas and equals", spec: "6.inputs.text=a, b = c", path: []string{"6", "inputs", "text"},
			values: []batch.Value{{Text: "a, b = c"}}},
		{name: "no equals", spec: "3.inputs.seed", wantErr: "want PATH=VALUES"},
		{name: "empty path part", spec: "3..seed=1", wantErr: "empty part"},
		{name: "path too short", spec: "seed=1", wantErr: "names no input"},
		{name: "backwards range", spec: "3.inputs.seed=5..1", wantErr: "runs backwards"},
		{name: "huge range", spec: "3.inputs.seed=0..1000000000", wantErr: "more than"},
		{name: "missing file", spec: "6.inputs.text=@nope.txt", wantErr: "file does not exist"},
		{name: "empty file", spec: "6.inputs.text=@empty.txt", wantErr: "no non-empty line"},
		{name: "bad array", spec: "3.inputs.cfg=[1,", wantErr: "not a JSON array"},
		{name: "empty array", spec: "3.inputs.cfg=[]", wantErr: "no values"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := batch.ParseSet(tt.spec, read)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.path, s.Path)
			require.Equal(t, tt.values, s.Values)
		})
	}
}

func TestApplyKeepsEverythingElse(t *testing.T) {
	t.Parallel()
	s, err := batch.ParseSet("6.inputs.text=a \"quoted\" cat", nil)
	require.NoError(t, err)
	got, err := s.Apply(json.RawMessage(wf), s.Values[0])
	require.NoError(t, err)
	require.Equal(t, strings.Replace(wf, `"a lighthouse"`, `"a \"quoted\" cat"`, 1), string(got),
		"only the value changes: key order, big seed and 7.50 stay as written")
}

func TestApplyTypes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, spec string
		want       string // the value written, as JSON
		wantErr    string
	}{
		{name: "number from range keeps digits", spec: "3.inputs.seed=18446744073709551615..18446744073709551615", want: `18446744073709551615`},
		{name: "number literal", spec: "3.inputs.cfg=6.25", want: `6.25`},
		{name: "number from JSON string", spec: `3.inputs.cfg=["6.5"]`, want: `6.5`},
		{name: "not a number", spec: "3.inputs.steps=many", wantErr: `"many" is not a number`},
		{name: "string from range", spec: "6.inputs.text=1..1", want: `"1"`},
		{name: "string from JSON string", spec: `6.inputs.text=["x\ny"]`, want: `"x\ny"`},
		{name: "string literal that looks like JSON", spec: `6.inputs.text=[1`, wantErr: "not a JSON array"},
		{name: "link from JSON", spec: `3.inputs.model=[["5",0]]`, want: `["5",0]`},
		{name: "link from literal JSON", spec: `3.inputs.model={"a":1}`, want: `{"a":1}`},
		{name: "link from text", spec: `3.inputs.model=five`, wantErr: "not JSON"},
		{name: "missing node", spec: "12.inputs.seed=1", wantErr: `the workflow has no 12 (there: "3", "6", "9")`},
		{name: "missing input", spec: "3.inputs.sede=1", wantErr: `the workflow has no 3.inputs.sede`},
		{name: "through a non-object", spec: "3.inputs.seed.x=1", wantErr: "3.inputs.seed is number, not an object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := batch.ParseSet(tt.spec, nil)
			if err == nil {
				_, err = s.Apply(json.RawMessage(wf), s.Values[0])
			}
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			items, err := batch.Expand([]batch.Item{{Input: json.RawMessage(wf), Origin: "wf"}}, []batch.Set{s}, true)
			require.NoError(t, err)
			require.Equal(t, tt.want, string(items[0].Params[strings.Join(s.Path, ".")]))
			require.True(t, json.Valid(items[0].Input))
		})
	}
}

func TestExpandIsACartesianProduct(t *testing.T) {
	t.Parallel()
	seeds, err := batch.ParseSet("3.inputs.seed=1..3", nil)
	require.NoError(t, err)
	texts, err := batch.ParseSet(`6.inputs.text=["a","b"]`, nil)
	require.NoError(t, err)
	items, err := batch.Expand([]batch.Item{{Input: json.RawMessage(wf), Origin: "wf"}}, []batch.Set{seeds, texts}, true)
	require.NoError(t, err)
	require.Len(t, items, 6)
	var got []string
	for i, it := range items {
		require.Equal(t, i, it.Index)
		got = append(got, it.Name+":"+string(it.Params["3.inputs.seed"])+string(it.Params["6.inputs.text"]))
	}
	require.Equal(t, []string{`seed-1_text-a:1"a"`, `seed-1_text-b:1"b"`, `seed-2_text-a:2"a"`, `seed-2_text-b:2"b"`,
		`seed-3_text-a:3"a"`, `seed-3_text-b:3"b"`}, got, "the first set varies slowest")

	// Several base items: each is repeated, named after itself.
	items, err = batch.Expand([]batch.Item{{Name: "x", Input: json.RawMessage(wf)}, {Name: "y", Input: json.RawMessage(wf)}}, []batch.Set{texts}, false)
	require.NoError(t, err)
	require.Equal(t, []string{"x_text-a", "x_text-b", "y_text-a", "y_text-b"}, []string{items[0].Name, items[1].Name, items[2].Name, items[3].Name})
}

// TestSweepNamesComeFromValues: an item of a sweep is named after what it
// runs, so a sweep that grows (a longer range, a value added to a list,
// even in front) keeps the names of the items it had, and names that
// could be mistaken carry a hash so that no two items share one.
func TestSweepNamesComeFromValues(t *testing.T) {
	t.Parallel()
	names := func(specs ...string) map[string]string {
		t.Helper()
		var sets []batch.Set
		for _, spec := range specs {
			s, err := batch.ParseSet(spec, nil)
			require.NoError(t, err)
			sets = append(sets, s)
		}
		items, err := batch.Expand([]batch.Item{{Input: json.RawMessage(wf), Origin: "wf"}}, sets, true)
		require.NoError(t, err)
		out := map[string]string{}
		for _, it := range items {
			require.NoError(t, proto.ValidID(batch.JobID("b", it)), it.Name)
			require.Equal(t, batch.SafeName(it.Name), it.Name, "safe as a folder name")
			out[it.Name] = string(it.Input)
		}
		return out
	}
	small := names("3.inputs.seed=1..20", `6.inputs.text=["a fox","b"]`)
	grown := names("3.inputs.seed=0..22", `6.inputs.text=["c","a fox","b"]`)
	require.Len(t, small, 40)
	require.Len(t, grown, 69)
	for name, in := range small {
		require.Equal(t, in, grown[name], "%s keeps its name and content", name)
	}
	require.Contains(t, small, "seed-20_text-a_fox")
	require.Contains(t, names("3.inputs.cfg=[-1.5, 7.50]"), "cfg--1.5")
	require.Contains(t, names("3.inputs.cfg=[-1.5, 7.50]"), "cfg-7.50", "digits as written")

	// Values a name cannot spell exactly get a hash of every value.
	tricky := names(`6.inputs.text=["a/b","a?b","a_b","a b"," a b","a  b","` + strings.Repeat("long ", 20) + `"]`)
	require.Len(t, tricky, 7, "no two share a name")
	require.Contains(t, tricky, "text-a_b", "a space is an underscore")
	for name := range tricky {
		require.LessOrEqual(t, len(name), 96)
		if name != "text-a_b" {
			require.Regexp(t, `^text-[A-Za-z0-9._-]+-[0-9a-f]{8}$`, name)
		}
	}
	// The text of a later key inside a value cannot join two values
	// into one name.
	joined := names(`6.inputs.text=["x","x seed-1"]`, "3.inputs.seed=1..2")
	require.Len(t, joined, 4)
	require.Contains(t, joined, "text-x_seed-1")
	for name := range joined {
		if strings.HasPrefix(name, "text-x_seed-1_") {
			require.Regexp(t, `-[0-9a-f]{8}$`, name)
		}
	}
	// Two sets with the same last key are told apart by their node.
	a, err := batch.ParseSet("3.inputs.seed=1..1", nil)
	require.NoError(t, err)
	b, err := batch.ParseSet("5.inputs.seed=2..2", nil)
	require.NoError(t, err)
	two := `{"workflow":{"3":{"inputs":{"seed":0}},"5":{"inputs":{"seed":0}}}}`
	items, err := batch.Expand([]batch.Item{{Input: json.RawMessage(two)}}, []batch.Set{a, b}, true)
	require.NoError(t, err)
	require.Equal(t, "3.seed-1_5.seed-2", items[0].Name)
}

func TestExpandRefusesTooMany(t *testing.T) {
	t.Parallel()
	a, err := batch.ParseSet("3.inputs.seed=1..1000", nil)
	require.NoError(t, err)
	b, err := batch.ParseSet("3.inputs.steps=1..1001", nil)
	require.NoError(t, err)
	_, err = batch.Expand([]batch.Item{{Input: json.RawMessage(wf)}}, []batch.Set{a, b}, true)
	require.ErrorContains(t, err, "more than 1000000 items")
}

func FuzzParseSet(f *testing.F) {
	f.Add("3.inputs.seed=1..100")
	f.Add(`3.inputs.cfg=[5, 7.5]`)
	f.Add("6.inputs.text=@p.txt")
	f.Add("a=b")
	f.Add("3.inputs.seed=-5..-1")
	read := files(map[string]string{"p.txt": "x\ny"})
	f.Fuzz(func(t *testing.T, spec string) {
		s, err := batch.ParseSet(spec, read)
		if err != nil {
			return
		}
		if len(s.Values) == 0 || len(s.Path) < 2 {
			t.Fatalf("accepted %q without values or path", spec)
		}
		for _, v := range s.Values[:min(len(s.Values), 5)] {
			out, err := s.Apply(json.RawMessage(wf), v)
			if err == nil && !json.Valid(out) {
				t.Fatalf("%q made invalid JSON: %s", spec, out)
			}
		}
	})
}

// FuzzApply writes values into arbitrary documents: a success is always
// valid JSON whose value at the path is the one written.
func FuzzApply(f *testing.F) {
	f.Add(wf, "3.inputs.seed", "42")
	f.Add(`{"workflow":{"1":{"inputs":{"t":"x"}}}}`, "1.inputs.t", `y"z`)
	f.Add(`{"workflow": { "1" : { "inputs" : { "b" : true } } } }`, "1.inputs.b", "false")
	f.Fuzz(func(t *testing.T, doc, path, value string) {
		s, err := batch.ParseSet(path+"="+value, nil)
		if err != nil || len(s.Values) != 1 {
			return
		}
		out, err := s.Apply(json.RawMessage(doc), s.Values[0])
		if err != nil {
			var target interface{ Error() string }
			if !errors.As(err, &target) {
				t.Fatal("error without text")
			}
			return
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON from %q: %q", doc, out)
		}
		if !json.Valid([]byte(doc)) {
			t.Fatalf("accepted invalid JSON %q", doc)
		}
	})
}
