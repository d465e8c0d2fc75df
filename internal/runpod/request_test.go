package runpod_test

import (
	"encoding/json"
	"errors"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/proto"
)

func TestDecodeRunRequest(t *testing.T) {
	t.Parallel()
	req, in, err := runpod.DecodeRunRequest([]byte(` {"input":{"workflow":{"3":{"inputs":{"seed":18446744073709551615}}},"images":[]},
		"webhook":"https://hook.example/x","webhookV2":"ignored",
		"policy":{"executionTimeout":600000,"ttl":86400000,"lowPriority":true},
		"s3Config":{"accessId":"a","accessSecret":"s","bucketName":"b","endpointUrl":"https://s3.example","objectPath":"p"}} `))
	require.NoError(t, err)
	require.Contains(t, string(req.Input), "18446744073709551615", "the input is kept byte for byte")
	require.Contains(t, string(in.Workflow), "18446744073709551615")
	require.Equal(t, "https://hook.example/x", req.Webhook)
	require.Equal(t, proto.Policy{ExecutionTimeout: 600000, TTL: 86400000, LowPriority: true}, req.Policy)
	require.Equal(t, &proto.S3Config{AccessID: "a", AccessSecret: "s", BucketName: "b", EndpointURL: "https://s3.example", ObjectPath: "p"}, req.S3Config)

	req, _, err = runpod.DecodeRunRequest([]byte(`{"input":{"workflow":{}},"webhook":null,"policy":null,"s3Config":null}`))
	require.NoError(t, err)
	require.Equal(t, proto.Policy{}, req.Policy)
	require.Nil(t, req.S3Config)

	_, _, err = runpod.DecodeRunRequest([]byte(`{"input":{"workflow":{}},"s3Config":{"accessSecret":["SECRET"]}}`))
	var re *runpod.RequestError
	require.ErrorAs(t, err, &re)
	require.NotContains(t, err.Error(), "SECRET", "a secret is never echoed")
}

// FuzzDecodeRunRequest feeds arbitrary bodies to the request decoder: it
// never panics, refuses with a typed error only, and what it accepts is a
// valid input with a policy in RunPod's ranges and an http(s) webhook.
func FuzzDecodeRunRequest(f *testing.F) {
	for _, seed := range []string{
		`{"input":{"workflow":{"1":{"class_type":"SaveImage","inputs":{}}}}}`,
		`{"input":{"workflow":{}},"webhook":"http://hook","policy":{"ttl":60000,"executionTimeout":5000,"lowPriority":true}}`,
		`{"input":"{\"workflow\":{}}","s3Config":{"accessId":"a","accessSecret":"s","bucketName":"b","endpointUrl":"https://e"}}`,
		`{"input":{"workflow":{},"images":[{"name":"a.png","image":"AA=="}]},"policy":{"ttl":1}}`,
		`[]`, `null`, ``, `{"input":`, `{"input":{}}`,
		`{"input":{"workflow":{}},"webhook":"file:///etc/passwd","policy":{"executionTimeout":9223372036854775807}}`,
		`{"input":{"workflow":{}},"webhook":"https://u:p@h/x","policy":{"ttl":9223372036854775808}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, in, err := runpod.DecodeRunRequest(body)
		if err != nil {
			var re *runpod.RequestError
			var ie *proto.InputError
			if !errors.As(err, &re) && !errors.As(err, &ie) {
				t.Fatalf("untyped error %T: %v", err, err)
			}
			if req != nil || in != nil {
				t.Fatal("a refusal returned a request")
			}
			return
		}
		if _, err := proto.DecodeInput(req.Input); err != nil {
			t.Fatalf("accepted an input DecodeInput refuses: %v", err)
		}
		for _, v := range []int64{req.Policy.TTL, req.Policy.ExecutionTimeout} {
			if v < 0 || v > proto.MaxTTL || v > proto.MaxExecutionTimeout {
				t.Fatalf("accepted a policy value out of range: %d", v)
			}
		}
		if req.Policy.TTL != 0 && req.Policy.TTL < 10000 || req.Policy.ExecutionTimeout != 0 && req.Policy.ExecutionTimeout < 5000 {
			t.Fatalf("accepted a policy below RunPod's minimum: %+v", req.Policy)
		}
		if req.Webhook != "" {
			u, err := url.Parse(req.Webhook)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.User != nil || u.Hostname() == "" || len(req.Webhook) > proto.MaxWebhookLen {
				t.Fatalf("accepted webhook %q", req.Webhook)
			}
		}
		if !json.Valid(req.Input) {
			t.Fatal("accepted invalid JSON input")
		}
	})
}
