package runpod

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"

	"github.com/comfyfleet/comfyfleet/proto"
)

// RunRequest is RunPod's /run and /runsync body (runpod-protocol.md §C.3)
// once decoded and checked. Fields RunPod's SDKs send that the fleet has no
// use for (webhookV2) are ignored.
type RunRequest struct {
	// Input is the job input, byte for byte as sent.
	Input json.RawMessage
	// Webhook is empty or an http(s) URL.
	Webhook string
	// Policy holds executionTimeout and ttl in RunPod's ranges, or zero
	// for the defaults.
	Policy proto.Policy
	// S3Config is the per-request S3 settings; secret.
	S3Config *proto.S3Config
}

// RequestError is a request the API refuses with 400. Its text is meant
// for the caller and names the field.
type RequestError struct {
	Msg string
}

func (e *RequestError) Error() string { return e.Msg }

func badRequest(format string, args ...any) error {
	return &RequestError{Msg: fmt.Sprintf(format, args...)}
}

// DecodeRunRequest decodes and checks a /run or /runsync body: a JSON
// object with "input" (checked by proto.DecodeInput, whose errors it
// returns as they are, *proto.InputError), and optional "webhook",
// "policy" and "s3Config". Any other problem is a *RequestError naming the
// field.
func DecodeRunRequest(body []byte) (*RunRequest, *proto.Input, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, nil, badRequest(`request body is empty; send a JSON object such as {"input": {"workflow": {...}}}`)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return nil, nil, badRequest("request body is not a JSON object: %s", proto.DescribeJSONError(err))
	}
	if fields == nil { // the body was null
		return nil, nil, badRequest("request body is not a JSON object: got JSON null, want an object")
	}
	in, err := proto.DecodeInput(fields["input"])
	if err != nil {
		return nil, nil, err
	}
	req := &RunRequest{Input: bytes.TrimSpace(fields["input"])}
	if raw, ok := present(fields, "webhook"); ok {
		if err := json.Unmarshal(raw, &req.Webhook); err != nil {
			return nil, nil, badRequest("webhook must be a string (an http or https URL), got %s", proto.JSONKind(raw))
		}
		if req.Webhook != "" {
			if err := proto.ValidWebhook(req.Webhook); err != nil {
				return nil, nil, badRequest("webhook %v", err)
			}
		}
	}
	if raw, ok := present(fields, "policy"); ok {
		p, err := decodePolicy(raw)
		if err != nil {
			return nil, nil, err
		}
		req.Policy = p
	}
	if raw, ok := present(fields, "s3Config"); ok {
		c, err := decodeS3Config(raw)
		if err != nil {
			return nil, nil, err
		}
		req.S3Config = c
	}
	return req, in, nil
}

// present returns a field's value unless it is absent or null.
func present(fields map[string]json.RawMessage, name string) (json.RawMessage, bool) {
	raw, ok := fields[name]
	raw = bytes.TrimSpace(raw)
	if !ok || bytes.Equal(raw, []byte("null")) {
		return nil, false
	}
	return raw, true
}

func decodePolicy(raw json.RawMessage) (proto.Policy, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return proto.Policy{}, badRequest("policy must be an object with executionTimeout, ttl and lowPriority, got %s", proto.JSONKind(raw))
	}
	var p proto.Policy
	// RunPod's ranges (runpod-protocol.md §C.3), named in proto.
	millis := func(name string, lo, hi int64, dst *int64) error {
		v, ok := present(fields, name)
		if !ok {
			return nil
		}
		var n int64
		if err := json.Unmarshal(v, &n); err != nil {
			return badRequest("policy.%s must be a whole number of milliseconds from %d to %d, got %s", name, lo, hi, proto.Shorten(string(v)))
		}
		switch {
		case n < 0:
			return badRequest("policy.%s must not be negative, got %d", name, n)
		case n == 0:
			// RunPod's default.
		case n < lo || n > hi:
			return badRequest("policy.%s is %d ms, outside RunPod's range of %d ms to %d ms (7 days)", name, n, lo, hi)
		}
		*dst = n
		return nil
	}
	if err := millis("executionTimeout", proto.RunPodMinExecutionTimeout, proto.MaxExecutionTimeout, &p.ExecutionTimeout); err != nil {
		return p, err
	}
	if err := millis("ttl", proto.RunPodMinTTL, proto.MaxTTL, &p.TTL); err != nil {
		return p, err
	}
	if v, ok := present(fields, "lowPriority"); ok {
		if err := json.Unmarshal(v, &p.LowPriority); err != nil {
			return p, badRequest("policy.lowPriority must be true or false, got %s", proto.JSONKind(v))
		}
	}
	return p, nil
}

func decodeS3Config(raw json.RawMessage) (*proto.S3Config, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, badRequest("s3Config must be an object with accessId, accessSecret, bucketName and endpointUrl, got %s", proto.JSONKind(raw))
	}
	c := &proto.S3Config{}
	for name, dst := range map[string]*string{
		"accessId": &c.AccessID, "accessSecret": &c.AccessSecret, "bucketName": &c.BucketName,
		"endpointUrl": &c.EndpointURL, "objectPath": &c.ObjectPath,
	} {
		v, ok := present(fields, name)
		if !ok {
			continue
		}
		if err := json.Unmarshal(v, dst); err != nil {
			// Never echo the value: it may be a secret.
			return nil, badRequest("s3Config.%s must be a string, got %s", name, proto.JSONKind(v))
		}
	}
	if c.EndpointURL != "" {
		u, err := url.Parse(c.EndpointURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, badRequest("s3Config.endpointUrl is not an http or https URL")
		}
	}
	return c, nil
}
