package proto_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/proto"
)

// A workflow whose numbers a float64 would change: the largest seed, a
// long fraction, an exponent, and its own spacing.
const workflow = `{"3": {"class_type": "KSampler", "inputs": {"seed": 18446744073709551615, "cfg": 7.00000000000000000001, "denoise": 1E0}}}`

func TestStripSecrets(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, msg, want string
		removed         []string
	}{{
		name: "key and s3 credentials, the rest byte for byte",
		msg: `{"v":1,"id":"j1","input":{"workflow":` + workflow + `,"comfy_org_api_key":"ck-secret","images":[]},` +
			`"s3Config":{"accessId":"AKID","accessSecret":"s3-secret","bucketName":"b","endpointUrl":"https://s3.example"},"pool":"p"}`,
		want: `{"v":1,"id":"j1","input":{"workflow":` + workflow + `,"images":[]},` +
			`"s3Config":{"bucketName":"b","endpointUrl":"https://s3.example"},"pool":"p"}`,
		removed: []string{proto.SecretComfyOrgAPIKey, proto.SecretS3AccessID, proto.SecretS3AccessSecret},
	}, {
		name:    "first and last members, with space around them",
		msg:     " { \"input\" : { \"comfy_org_api_key\" : \"k\" , \"workflow\" : {} } , \"s3Config\" : { \"bucketName\":\"b\" ,\n\"accessSecret\" : \"s\" } }\n",
		want:    " { \"input\" : { \"workflow\" : {} } , \"s3Config\" : { \"bucketName\":\"b\" } }\n",
		removed: []string{proto.SecretComfyOrgAPIKey, proto.SecretS3AccessSecret},
	}, {
		name:    "the only member",
		msg:     `{"input":{ "comfy_org_api_key":"k" },"s3Config":{"accessId":"a"}}`,
		want:    `{"input":{  },"s3Config":{}}`,
		removed: []string{proto.SecretComfyOrgAPIKey, proto.SecretS3AccessID},
	}, {
		name: "every spelling the decoders read, duplicates included",
		msg: `{"INPUT":{"Comfy_Org_Api_Key":"k1","comfy_org_api_\u006bey":"k2","comfy_org_apı_key":"x","workflow":{}},` +
			`"input":{"comfy_org_api_key":"k3"},"s3config":{"ACCESSID":"a","accesſSecret":"s"}}`,
		// U+0131 (dotless i) folds to no ASCII letter: encoding/json does
		// not read it as the key, so it stays; U+017F (long s) folds to s.
		want:    `{"INPUT":{"comfy_org_apı_key":"x","workflow":{}},"input":{},"s3config":{}}`,
		removed: []string{proto.SecretComfyOrgAPIKey, proto.SecretS3AccessID, proto.SecretS3AccessSecret},
	}, {
		name:    "input as a JSON string holding the object",
		msg:     `{"id":"j","input":"{\"workflow\": {\"3\": {\"inputs\": {\"seed\": 18446744073709551615}}}, \"comfy_org_api_key\": \"k\"}"}`,
		want:    `{"id":"j","input":"{\"workflow\": {\"3\": {\"inputs\": {\"seed\": 18446744073709551615}}}}"}`,
		removed: []string{proto.SecretComfyOrgAPIKey},
	}, {
		name:    "empty secrets go unnamed",
		msg:     `{"input":{"comfy_org_api_key":"","workflow":{}},"s3Config":{"accessId":null,"accessSecret":"s"}}`,
		want:    `{"input":{"workflow":{}},"s3Config":{}}`,
		removed: []string{proto.SecretS3AccessSecret},
	}, {
		name:    "the headers of input.models entries",
		msg:     `{"input":{"workflow":{},"models":[{"url":"https://h.example/a","folder":"loras","headers":{"X-Key":"k1"}},{"url":"https://h.example/b","folder":"vae"},{"HEADERS":{"A":"k2"},"url":"u"}]}}`,
		want:    `{"input":{"workflow":{},"models":[{"url":"https://h.example/a","folder":"loras"},{"url":"https://h.example/b","folder":"vae"},{"url":"u"}]}}`,
		removed: []string{proto.SecretModelHeaders},
	}, {
		name: "nothing to remove: the message itself",
		msg:  `{"id":"j","input":{"workflow":` + workflow + `},"s3Config":null,"comfy_org_api_key":"top-level is not read"}`,
		want: `{"id":"j","input":{"workflow":` + workflow + `},"s3Config":null,"comfy_org_api_key":"top-level is not read"}`,
	}, {
		name: "secrets deeper in are not the job's",
		msg:  `{"input":{"workflow":{"1":{"inputs":{"comfy_org_api_key":"a node's own"}}}},"output":{"accessSecret":"x"}}`,
		want: `{"input":{"workflow":{"1":{"inputs":{"comfy_org_api_key":"a node's own"}}}},"output":{"accessSecret":"x"}}`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, removed, err := proto.StripSecrets([]byte(tt.msg))
			require.NoError(t, err)
			require.Equal(t, tt.want, string(out))
			require.Equal(t, tt.removed, removed)
			requireNoSecrets(t, out)
		})
	}
}

func TestStripSecretsRefusesWhatIsNotAJobMessage(t *testing.T) {
	t.Parallel()
	for _, msg := range []string{``, `{"input":`, `[{"input":{"comfy_org_api_key":"k"}}]`, `"x"`, `{} {}`} {
		_, _, err := proto.StripSecrets([]byte(msg))
		require.Error(t, err, msg)
		require.NotContains(t, err.Error(), "k\"", "the message is never echoed")
	}
}

// requireNoSecrets decodes a job message as the fleet does and checks
// that it holds no secret.
func requireNoSecrets(t testing.TB, msg []byte) {
	t.Helper()
	job, err := proto.DecodeJob(msg)
	if err != nil {
		return // nothing of it is read
	}
	if job.S3Config != nil && (job.S3Config.AccessID != "" || job.S3Config.AccessSecret != "") {
		t.Fatalf("s3Config credentials survived in %s", msg)
	}
	if in, err := proto.DecodeInput(job.Input); err == nil && in.ComfyOrgAPIKey != "" {
		t.Fatalf("comfy_org_api_key %q survived in %s", in.ComfyOrgAPIKey, msg)
	}
	if in, err := proto.DecodeInput(job.Input); err == nil {
		for _, m := range in.Models {
			if len(m.Headers) > 0 {
				t.Fatalf("models headers survived in %s", msg)
			}
		}
	}
}

func FuzzStripSecrets(f *testing.F) {
	f.Add([]byte(`{"v":1,"id":"j1","input":{"workflow":` + workflow + `,"comfy_org_api_key":"ck"},"s3Config":{"accessId":"a","accessSecret":"s","bucketName":"b"}}`))
	f.Add([]byte(`{"input":"{\"workflow\":{},\"comfy_org_api_key\":\"k\"}","S3CONFIG":{"AccessId":"a"}}`))
	f.Add([]byte(`{"input":{"comfy_org_api_key":"k","comfy_org_api_key":"k2"},"s3Config":[1,{"accessId":"a"}]}`))
	f.Add([]byte(` {"input" : {"a":[{"b":"}\"{"}] , "comfy_org_api_\u006bey" : null}} `))
	f.Add([]byte(`{"input":{}, "s3Config":"x", "x": -0.0e-7}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"input":{"workflow":{},"models":[{"url":"https://h/x","folder":"loras","headers":{"X-Key":"k"}}, 3, {"Headers":null}]}}`))
	f.Fuzz(func(t *testing.T, msg []byte) {
		out, _, err := proto.StripSecrets(msg)
		if err != nil {
			var v any
			if json.Unmarshal(msg, &v) == nil {
				if _, isObj := v.(map[string]any); isObj {
					t.Fatalf("refused the object %q: %v", msg, err)
				}
			}
			return
		}
		if !json.Valid(out) {
			t.Fatalf("%q became invalid JSON %q", msg, out)
		}
		requireNoSecrets(t, out)
		// Only secrets went: the message as a tree, numbers as their text,
		// is the same once the secrets are taken out of both.
		want, got := tree(t, msg), tree(t, out)
		dropSecrets(want)
		dropSecrets(got)
		if !reflect.DeepEqual(want, got) {
			t.Fatalf("StripSecrets(%q) = %q: more than the secrets changed", msg, out)
		}
		// An object input's bytes are only cut, never rewritten.
		if !stringInput(msg) && !subsequence(out, msg) {
			t.Fatalf("%q is not %q with bytes cut out", out, msg)
		}
		// Stripping again changes nothing.
		again, more, err := proto.StripSecrets(out)
		if err != nil || !bytes.Equal(again, out) || len(more) != 0 {
			t.Fatalf("stripping %q again gave %q, %v, %v", out, again, more, err)
		}
	})
}

// tree decodes JSON with numbers kept as their text.
func tree(t *testing.T, data []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("decode %q: %v", data, err)
	}
	return v
}

// dropSecrets deletes from a decoded job message what StripSecrets
// removes; an input given as a string is decoded into its tree.
func dropSecrets(v any) {
	m, ok := v.(map[string]any)
	if !ok {
		return
	}
	for k, val := range m {
		switch {
		case strings.EqualFold(k, "input"):
			if s, ok := val.(string); ok {
				var inner any
				d := json.NewDecoder(strings.NewReader(s))
				d.UseNumber()
				if d.Decode(&inner) == nil && !d.More() {
					if _, isObj := inner.(map[string]any); isObj {
						val = inner
						m[k] = inner
					}
				}
			}
			deleteFold(val, "comfy_org_api_key")
			if in, ok := val.(map[string]any); ok {
				for mk, mv := range in {
					if list, ok := mv.([]any); ok && strings.EqualFold(mk, "models") {
						for _, el := range list {
							deleteFold(el, "headers")
						}
					}
				}
			}
		case strings.EqualFold(k, "s3Config"):
			deleteFold(val, "accessId", "accessSecret")
		}
	}
}

func deleteFold(v any, names ...string) {
	m, ok := v.(map[string]any)
	if !ok {
		return
	}
	for k := range m {
		for _, n := range names {
			if strings.EqualFold(k, n) {
				delete(m, k)
			}
		}
	}
}

func stringInput(msg []byte) bool {
	d := json.NewDecoder(bytes.NewReader(msg))
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		return false
	}
	for d.More() {
		key, err := d.Token()
		if err != nil {
			return false
		}
		var v json.RawMessage
		if err := d.Decode(&v); err != nil {
			return false
		}
		if k, _ := key.(string); strings.EqualFold(k, "input") && v[0] == '"' {
			return true
		}
	}
	return false
}

// subsequence reports whether a is b with some bytes left out.
func subsequence(a, b []byte) bool {
	j := 0
	for i := 0; i < len(b) && j < len(a); i++ {
		if a[j] == b[i] {
			j++
		}
	}
	return j == len(a)
}

func TestDecodeSecrets(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, body, wantErr string
		want                *proto.Secrets
	}{
		{name: "empty: none", body: ""},
		{name: "null: none", body: " null "},
		{name: "nothing in it: none", body: `{}`},
		{name: "both", body: `{"comfy_org_api_key":"ck","s3Config":{"accessId":"a","accessSecret":"s"}}`,
			want: &proto.Secrets{ComfyOrgAPIKey: "ck", S3Config: &proto.S3Credentials{AccessID: "a", AccessSecret: "s"}}},
		{name: "key only", body: `{"comfy_org_api_key":"ck"}`, want: &proto.Secrets{ComfyOrgAPIKey: "ck"}},
		{name: "not an object", body: `["ck"]`, wantErr: "secrets must be a JSON object"},
		{name: "key not a string", body: `{"comfy_org_api_key":7}`, wantErr: "comfy_org_api_key must be a string, got a number"},
		{name: "half the credentials", body: `{"s3Config":{"accessId":"a"}}`, wantErr: "s3Config needs both accessId and accessSecret"},
		{name: "another bucket", body: `{"s3Config":{"accessId":"a","accessSecret":"s","endpointUrl":"http://x"}}`, wantErr: "s3Config.endpointUrl: a replay gives credentials only"},
		{name: "unknown field", body: `{"webhook":"x"}`, wantErr: `"webhook" is not a secret of a job`},
		{name: "secret not echoed", body: `{"s3Config":{"accessId":"a","accessSecret":12345}}`, wantErr: "s3Config.accessSecret must be a string, got a number"},
		{name: "too long", body: `{"comfy_org_api_key":"` + strings.Repeat("k", 5000) + `"}`, wantErr: "comfy_org_api_key is 5000 bytes long, the limit is 4096"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := proto.DecodeSecrets([]byte(tt.body))
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.NotContains(t, err.Error(), "12345")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func FuzzDecodeSecrets(f *testing.F) {
	f.Add([]byte(`{"comfy_org_api_key":"ck","s3Config":{"accessId":"a","accessSecret":"s"}}`))
	f.Add([]byte(`{"s3Config":{"accessId":"a"}}`))
	f.Add([]byte(`{"s3Config":null}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := proto.DecodeSecrets(data)
		if err != nil || s == nil {
			return
		}
		if s.ComfyOrgAPIKey == "" && s.S3Config == nil {
			t.Fatalf("%q: empty secrets returned", data)
		}
		if s.S3Config != nil && (s.S3Config.AccessID == "" || s.S3Config.AccessSecret == "") {
			t.Fatalf("%q: half the credentials accepted", data)
		}
	})
}

func TestRestoreSecrets(t *testing.T) {
	t.Parallel()
	dead := func() *proto.Job {
		return &proto.Job{ID: "j", Input: json.RawMessage(`{"workflow":` + workflow + `}`),
			S3Config: &proto.S3Config{BucketName: "b", EndpointURL: "https://s3.example", ObjectPath: "o"}}
	}
	all := []string{proto.SecretComfyOrgAPIKey, proto.SecretS3AccessID, proto.SecretS3AccessSecret}

	t.Run("supplied", func(t *testing.T) {
		t.Parallel()
		j := dead()
		from, err := j.RestoreSecrets(all, &proto.Secrets{ComfyOrgAPIKey: "new\"key", S3Config: &proto.S3Credentials{AccessID: "a", AccessSecret: "s"}})
		require.NoError(t, err)
		require.Equal(t, map[string]proto.SecretSource{"comfy_org_api_key": proto.SecretSupplied, "s3Config": proto.SecretSupplied}, from)
		require.Equal(t, `{"comfy_org_api_key":"new\"key","workflow":`+workflow+`}`, string(j.Input), "the workflow byte for byte")
		in, err := proto.DecodeInput(j.Input)
		require.NoError(t, err)
		require.Equal(t, "new\"key", in.ComfyOrgAPIKey)
		require.Equal(t, &proto.S3Config{AccessID: "a", AccessSecret: "s", BucketName: "b", EndpointURL: "https://s3.example", ObjectPath: "o"}, j.S3Config)
	})
	t.Run("the worker's own settings", func(t *testing.T) {
		t.Parallel()
		j := dead()
		from, err := j.RestoreSecrets(all, nil)
		require.NoError(t, err)
		require.Equal(t, map[string]proto.SecretSource{"comfy_org_api_key": proto.SecretWorker, "s3Config": proto.SecretWorker}, from)
		require.Nil(t, j.S3Config, "outputs go where the worker's BUCKET_* say")
		require.Equal(t, `{"workflow":`+workflow+`}`, string(j.Input))
	})
	t.Run("a supplied key replaces one the message still has, in a string input too", func(t *testing.T) {
		t.Parallel()
		j := &proto.Job{ID: "j", Input: json.RawMessage(`"{\"comfy_org_api_key\": \"old\", \"workflow\": {\"seed\": 18446744073709551615}}"`)}
		from, err := j.RestoreSecrets(nil, &proto.Secrets{ComfyOrgAPIKey: "new"})
		require.NoError(t, err)
		require.Equal(t, map[string]proto.SecretSource{"comfy_org_api_key": proto.SecretSupplied}, from)
		require.Equal(t, `"{\"comfy_org_api_key\":\"new\",\"workflow\": {\"seed\": 18446744073709551615}}"`, string(j.Input))
	})
	t.Run("nothing lost, nothing given", func(t *testing.T) {
		t.Parallel()
		j := dead()
		from, err := j.RestoreSecrets(nil, nil)
		require.NoError(t, err)
		require.Empty(t, from)
		require.Equal(t, dead(), j)
	})
	t.Run("credentials for a job without s3Config", func(t *testing.T) {
		t.Parallel()
		j := &proto.Job{ID: "j", Input: json.RawMessage(`{"workflow":{}}`)}
		_, err := j.RestoreSecrets(nil, &proto.Secrets{S3Config: &proto.S3Credentials{AccessID: "a", AccessSecret: "s"}})
		require.ErrorContains(t, err, "the job has no s3Config to give credentials to")
	})
}

// TestStripThenRestore: a dead letter's message, stripped, then given its
// secrets back, is the job it was.
func TestStripThenRestore(t *testing.T) {
	t.Parallel()
	orig := &proto.Job{V: 1, ID: "j", Input: json.RawMessage(`{"workflow":` + workflow + `,"comfy_org_api_key":"ck"}`),
		S3Config: &proto.S3Config{AccessID: "a", AccessSecret: "s", BucketName: "b", EndpointURL: "https://s3.example"}}
	msg, err := json.Marshal(orig)
	require.NoError(t, err)
	stripped, removed, err := proto.StripSecrets(msg)
	require.NoError(t, err)
	require.NotContains(t, string(stripped), `"ck"`)
	require.NotContains(t, string(stripped), `"s"`)
	j, err := proto.DecodeJob(stripped)
	require.NoError(t, err)
	_, err = j.RestoreSecrets(removed, &proto.Secrets{ComfyOrgAPIKey: "ck", S3Config: &proto.S3Credentials{AccessID: "a", AccessSecret: "s"}})
	require.NoError(t, err)
	in, err := proto.DecodeInput(j.Input)
	require.NoError(t, err)
	require.Equal(t, "ck", in.ComfyOrgAPIKey)
	require.JSONEq(t, workflow, string(in.Workflow))
	require.Contains(t, string(in.Workflow), "18446744073709551615")
	require.Equal(t, orig.S3Config, j.S3Config)
}

// FuzzRestoreSecrets: whatever input a dead letter holds, a supplied key
// is the one the worker reads, and the rest of the input is unchanged.
func FuzzRestoreSecrets(f *testing.F) {
	f.Add([]byte(`{"workflow":`+workflow+`}`), "ck")
	f.Add([]byte(`"{\"workflow\":{},\"COMFY_ORG_API_KEY\":\"old\"}"`), "k\u2028\"")
	f.Add([]byte(` { } `), "k")
	f.Fuzz(func(t *testing.T, input []byte, key string) {
		if key == "" || !utf8.ValidString(key) || !json.Valid(input) {
			return // a key comes from a JSON string: valid UTF-8
		}
		j := &proto.Job{ID: "j", Input: input}
		if _, err := j.RestoreSecrets(nil, &proto.Secrets{ComfyOrgAPIKey: key}); err != nil {
			return // not an object, nor a string holding one
		}
		before, errB := proto.DecodeInput(input)
		after, errA := proto.DecodeInput(j.Input)
		if errB == nil && errA != nil {
			t.Fatalf("%q became %q, which no longer decodes: %v", input, j.Input, errA)
		}
		if errA != nil {
			return
		}
		if after.ComfyOrgAPIKey != key {
			t.Fatalf("%q: the worker reads key %q, not %q", j.Input, after.ComfyOrgAPIKey, key)
		}
		if errB == nil && !bytes.Equal(before.Workflow, after.Workflow) {
			t.Fatalf("%q: the workflow changed from %q to %q", j.Input, before.Workflow, after.Workflow)
		}
	})
}
