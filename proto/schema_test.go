package proto_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/proto"
)

// schemaDoc is proto/schema.json decoded.
func schemaDoc(t *testing.T) map[string]any {
	t.Helper()
	var doc map[string]any
	require.NoError(t, json.Unmarshal(proto.JobSchema(), &doc))
	return doc
}

// TestSchemaMatchesGoTypes walks the Job type and the schema side by side:
// every field of the Go types must be in the schema under its JSON name with
// a matching type, and the schema must describe no field the types lack. A
// field added, renamed, retyped or removed in Go without the same change in
// schema.json fails here.
func TestSchemaMatchesGoTypes(t *testing.T) {
	t.Parallel()
	doc := schemaDoc(t)
	w := &schemaWalker{doc: doc, raw: map[string]reflect.Type{
		// Job.input is kept raw; what it holds is an Input.
		".input": reflect.TypeOf(proto.Input{}),
	}}
	w.walk(".", reflect.TypeOf(proto.Job{}), doc)
	require.Empty(t, w.problems, "proto/schema.json and the Go types disagree:\n%s", strings.Join(w.problems, "\n"))

	props := doc["properties"].(map[string]any)
	require.EqualValues(t, proto.Version, props["v"].(map[string]any)["maximum"], "the schema's v.maximum is proto.Version")
	var lanes []string
	for _, l := range props["lane"].(map[string]any)["enum"].([]any) {
		lanes = append(lanes, l.(string))
	}
	require.ElementsMatch(t, []string{string(proto.LaneInteractive), string(proto.LaneBatch)}, lanes)
	require.ElementsMatch(t, []any{"id", "input"}, doc["required"])
}

type schemaWalker struct {
	doc      map[string]any
	raw      map[string]reflect.Type
	problems []string
}

func (w *schemaWalker) fail(path, format string, args ...any) {
	w.problems = append(w.problems, path+": "+fmt.Sprintf(format, args...))
}

// resolve follows a local $ref, and picks the object branch of a oneOf.
func (w *schemaWalker) resolve(node map[string]any) map[string]any {
	for {
		if ref, ok := node["$ref"].(string); ok {
			name := strings.TrimPrefix(ref, "#/$defs/")
			node = w.doc["$defs"].(map[string]any)[name].(map[string]any)
			continue
		}
		if alts, ok := node["oneOf"].([]any); ok {
			for _, a := range alts {
				alt := w.resolve(a.(map[string]any))
				if alt["type"] == "object" {
					return alt
				}
			}
		}
		return node
	}
}

var (
	timeType = reflect.TypeOf(time.Time{})
	rawType  = reflect.TypeOf(json.RawMessage(nil))
)

func (w *schemaWalker) walk(path string, typ reflect.Type, node map[string]any) {
	node = w.resolve(node)
	if typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	if typ == rawType {
		if inner, ok := w.raw[path]; ok {
			w.walk(path, inner, node)
		} else if node["type"] != "object" {
			w.fail(path, "raw JSON object in Go, schema type %v", node["type"])
		}
		return
	}
	want := ""
	switch {
	case typ == timeType:
		want = "string"
		if node["format"] != "date-time" {
			w.fail(path, "a time in Go: the schema needs format date-time")
		}
	case typ.Kind() == reflect.String:
		want = "string"
	case typ.Kind() >= reflect.Int && typ.Kind() <= reflect.Uint64:
		want = "integer"
	case typ.Kind() == reflect.Bool:
		want = "boolean"
	case typ.Kind() == reflect.Slice:
		want = "array"
	case typ.Kind() == reflect.Struct, typ.Kind() == reflect.Map && typ.Key().Kind() == reflect.String:
		want = "object"
	default:
		w.fail(path, "Go kind %s has no schema mapping in this test", typ.Kind())
		return
	}
	got, _ := node["type"].(string)
	if got == "" {
		if enum, ok := node["enum"].([]any); ok && len(enum) > 0 {
			if _, ok := enum[0].(string); ok {
				got = "string"
			}
		}
	}
	if got != want {
		w.fail(path, "Go type %s wants schema type %q, the schema says %q", typ, want, got)
		return
	}
	switch want {
	case "array":
		items, ok := node["items"].(map[string]any)
		if !ok {
			w.fail(path, "array without items")
			return
		}
		w.walk(path+"[]", typ.Elem(), items)
	case "object":
		if typ == timeType {
			return
		}
		if typ.Kind() == reflect.Map {
			if items, ok := node["additionalProperties"].(map[string]any); ok {
				w.walk(path+"{}", typ.Elem(), items)
			} else {
				w.fail(path, "a map in Go: the schema needs additionalProperties")
			}
			return
		}
		props, _ := node["properties"].(map[string]any)
		fields := jsonFields(typ)
		for name, ft := range fields {
			sub, ok := props[name].(map[string]any)
			if !ok {
				w.fail(path, "field %q of %s is missing from the schema", name, typ)
				continue
			}
			w.walk(strings.TrimSuffix(path, ".")+"."+name, ft, sub)
		}
		var extra []string
		for name := range props {
			if _, ok := fields[name]; !ok {
				extra = append(extra, name)
			}
		}
		sort.Strings(extra)
		for _, name := range extra {
			w.fail(path, "the schema has a property %q that %s lacks", name, typ)
		}
	}
}

// jsonFields maps the JSON names of a struct's encoded fields to their types.
func jsonFields(typ reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for f := range typ.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

// TestSchemaAgreesWithDecoder validates messages with a JSON Schema
// validator and with DecodeJob + DecodeInput: both must accept and refuse
// the same messages, except where the schema is stricter on purpose.
func TestSchemaAgreesWithDecoder(t *testing.T) {
	t.Parallel()
	c := jsonschema.NewCompiler()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(proto.JobSchema()))
	require.NoError(t, err)
	require.NoError(t, c.AddResource("schema.json", doc))
	c.AssertFormat()
	sch, err := c.Compile("schema.json")
	require.NoError(t, err)

	const wf = `{"3":{"class_type":"KSampler","inputs":{"seed":18446744073709551615}}}`
	tests := []struct {
		name, msg string
		valid     bool
		stricter  bool // the schema refuses what the server accepts
	}{
		{name: "minimal", msg: `{"id":"a","input":{"workflow":` + wf + `}}`, valid: true},
		{name: "everything", valid: true, msg: `{"v":1,"id":"b-1_x","input":{"workflow":` + wf + `,"images":[{"name":"a.png","image":"AA=="},{"name":"b.png","blob":"in/x/b.png"}],"comfy_org_api_key":"k"},` +
			`"webhook":"https://example.com/hook","policy":{"executionTimeout":60000,"ttl":3600000,"lowPriority":true},` +
			`"s3Config":{"accessId":"i","accessSecret":"s","bucketName":"b","endpointUrl":"https://s3","objectPath":"p"},` +
			`"pool":"gpu-a","lane":"batch","batch_id":"sweep-1","index":0,"output":{"s3_prefix":"runs/2026"},` +
			`"submitted_at":"2026-01-02T03:04:05Z","retention_ms":86400000}`},
		{name: "input as a string", msg: `{"id":"a","input":"{\"workflow\":{}}"}`, valid: true},
		{name: "interactive lane", msg: `{"id":"a","lane":"interactive","input":{"workflow":{}}}`, valid: true},
		{name: "no id", msg: `{"input":{"workflow":{}}}`},
		{name: "id with a dot", msg: `{"id":"a.b","input":{"workflow":{}}}`},
		{name: "id too long", msg: `{"id":"` + strings.Repeat("x", 129) + `","input":{"workflow":{}}}`},
		{name: "no input", msg: `{"id":"a"}`},
		{name: "no workflow", msg: `{"id":"a","input":{}}`},
		{name: "workflow not an object", msg: `{"id":"a","input":{"workflow":[1]}}`},
		{name: "image without data", msg: `{"id":"a","input":{"workflow":{},"images":[{"name":"a.png"}]}}`},
		{name: "image name with a slash", msg: `{"id":"a","input":{"workflow":{},"images":[{"name":"x/a.png","image":"AA=="}]}}`},
		{name: "image name dot-dot", msg: `{"id":"a","input":{"workflow":{},"images":[{"name":"..","image":"AA=="}]}}`},
		{name: "bad lane", msg: `{"id":"a","lane":"fast","input":{"workflow":{}}}`},
		{name: "bad pool", msg: `{"id":"a","pool":"a b","input":{"workflow":{}}}`},
		{name: "bad batch id", msg: `{"id":"a","batch_id":"x/y","input":{"workflow":{}}}`},
		{name: "negative index", msg: `{"id":"a","index":-1,"input":{"workflow":{}}}`},
		{name: "negative ttl", msg: `{"id":"a","policy":{"ttl":-5},"input":{"workflow":{}}}`},
		{name: "negative retention", msg: `{"id":"a","retention_ms":-1,"input":{"workflow":{}}}`},
		{name: "future version", msg: `{"v":2,"id":"a","input":{"workflow":{}}}`},
		{name: "s3 prefix climbing out", msg: `{"id":"a","output":{"s3_prefix":"a/../b"},"input":{"workflow":{}}}`},
		{name: "s3 prefix absolute", msg: `{"id":"a","output":{"s3_prefix":"/a"},"input":{"workflow":{}}}`},
		{name: "s3 prefix with a control character", msg: `{"id":"a","output":{"s3_prefix":"a\u0001"},"input":{"workflow":{}}}`},
		{name: "s3 prefix with dots in a name", msg: `{"id":"a","output":{"s3_prefix":"v1..2/x"},"input":{"workflow":{}}}`, valid: true},
		{name: "index not a number", msg: `{"id":"a","index":"1","input":{"workflow":{}}}`},
		{name: "time not a time", msg: `{"id":"a","submitted_at":"yesterday","input":{"workflow":{}}}`},
		{name: "webhook file", msg: `{"id":"a","webhook":"file:///etc/passwd","input":{"workflow":{}}}`},
		{name: "webhook with credentials", msg: `{"id":"a","webhook":"https://u:p@h.example/x","input":{"workflow":{}}}`},
		{name: "webhook too long", msg: `{"id":"a","webhook":"https://h.example/` + strings.Repeat("a", 2048) + `","input":{"workflow":{}}}`},
		{name: "webhook with port and query", msg: `{"id":"a","webhook":"http://h.example:8080/x?t=1#f","input":{"workflow":{}}}`, valid: true},
		{name: "executionTimeout past 7 days", msg: `{"id":"a","policy":{"executionTimeout":604800001},"input":{"workflow":{}}}`},
		{name: "executionTimeout max int64", msg: `{"id":"a","policy":{"executionTimeout":9223372036854775807},"input":{"workflow":{}}}`},
		{name: "ttl past 7 days", msg: `{"id":"a","policy":{"ttl":604800001},"input":{"workflow":{}}}`},
		{name: "policy a string", msg: `{"id":"a","policy":"fast","input":{"workflow":{}}}`},
		{name: "retention past 30 days", msg: `{"id":"a","retention_ms":2592000001,"input":{"workflow":{}}}`},
		{name: "index past int32", msg: `{"id":"a","index":2147483648,"input":{"workflow":{}}}`},
		{name: "index at the limit", msg: `{"id":"a","index":2147483647,"input":{"workflow":{}}}`, valid: true},
		{name: "v negative", msg: `{"v":-1,"id":"a","input":{"workflow":{}}}`},
		{name: "source with a dot", msg: `{"id":"a","source":"a.b","input":{"workflow":{}}}`},
		{name: "image name with RLO", msg: `{"id":"a","input":{"workflow":{},"images":[{"name":"x\u202egnp.exe","image":"AA=="}]}}`},
		{name: "image name with a newline", msg: `{"id":"a","input":{"workflow":{},"images":[{"name":"a\nb.png","image":"AA=="}]}}`},
		{name: "image name with a zero width joiner", msg: `{"id":"a","input":{"workflow":{},"images":[{"name":"a\u200db.png","image":"AA=="}]}}`},
		{name: "image name in Japanese", msg: `{"id":"a","input":{"workflow":{},"images":[{"name":"日本.png","image":"AA=="}]}}`, valid: true},
		{name: "s3 prefix with an RLO", msg: `{"id":"a","output":{"s3_prefix":"a\u202e"},"input":{"workflow":{}}}`},
		{name: "misspelt field", msg: `{"id":"a","batchId":"x","input":{"workflow":{}}}`, stricter: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			inst, err := jsonschema.UnmarshalJSON(strings.NewReader(tt.msg))
			require.NoError(t, err)
			schemaErr := sch.Validate(inst)
			serverErr := decodeAll([]byte(tt.msg))
			if tt.valid {
				require.NoError(t, schemaErr, "schema")
				require.NoError(t, serverErr, "server")
				return
			}
			require.Error(t, schemaErr, "the schema accepts it")
			if tt.stricter {
				require.NoError(t, serverErr, "the server accepts it")
				return
			}
			require.Error(t, serverErr, "the server accepts it")
		})
	}
}

// decodeAll is what the dispatcher checks before it admits a job.
func decodeAll(msg []byte) error {
	j, err := proto.DecodeJob(msg)
	if err != nil {
		return err
	}
	_, err = proto.DecodeInput(j.Input)
	return err
}

func TestJobSchemaIsACopy(t *testing.T) {
	t.Parallel()
	a := proto.JobSchema()
	a[0] = 'x'
	require.True(t, slices.Equal(proto.JobSchema()[:1], []byte("{")))
}
