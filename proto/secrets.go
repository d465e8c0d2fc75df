package proto

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// A job message may carry three kinds of secret: the input's
// comfy_org_api_key, the credentials of its s3Config, and the headers of
// its input.models entries. They live as long as the job: in the
// job message while it is queued and in the API's request copy while the
// job can be retried ([RequestBucket]), never in Redis, events, logs or
// answers, and never in a dead letter, which keeps the message without
// them ([StripSecrets]) and names what it lost in
// [DLQSecretsRemovedHeader].

// The secrets of a job message, by their path in it: the names that
// [DLQSecretsRemovedHeader] lists.
const (
	SecretComfyOrgAPIKey = "input.comfy_org_api_key"
	SecretS3AccessID     = "s3Config.accessId"
	SecretS3AccessSecret = "s3Config.accessSecret"
	SecretModelHeaders   = "input.models[].headers"
)

// StripSecrets returns the job message msg without its secrets, and the
// names of those it held (SecretComfyOrgAPIKey, SecretS3AccessID,
// SecretS3AccessSecret, SecretModelHeaders, in that order; an empty or null value is removed
// but not named). The s3Config keeps its bucket, endpoint and object path,
// so that whoever reads the message sees where the outputs were to go.
// Everything else stays byte for byte as it was: the workflow's numbers
// are never reformatted. An input sent as a JSON string holding the
// object, which worker-comfyui accepts, loses its key inside the string.
//
// Members are matched as the decoders match them (names compared as
// encoding/json does, case-insensitively, escapes decoded, every
// duplicate), so no spelling of a secret the fleet would read survives.
// msg must be a JSON object.
func StripSecrets(msg []byte) ([]byte, []string, error) {
	if !json.Valid(msg) {
		return nil, nil, errorf("strip secrets: the job message is not valid JSON")
	}
	start, end, ok := trimmedObject(msg)
	if !ok {
		return nil, nil, errorf("strip secrets: the job message is %s, not a JSON object", JSONKind(msg))
	}
	var found [4]bool // by the index of the names below
	dropAs := func(m member, v []byte, names map[string]int) memberEdit {
		for n, i := range names {
			if strings.EqualFold(m.key, n) {
				found[i] = found[i] || !emptySecret(v)
				return memberEdit{drop: true}
			}
		}
		return memberEdit{}
	}
	stripModel := func(m member, v []byte) (memberEdit, error) {
		if strings.EqualFold(m.key, "headers") {
			found[3] = found[3] || !emptySecret(v) && !bytes.Equal(bytes.TrimSpace(v), []byte("{}"))
			return memberEdit{drop: true}, nil
		}
		return memberEdit{}, nil
	}
	stripInput := func(m member, v []byte) (memberEdit, error) {
		if strings.EqualFold(m.key, "models") && v[0] == '[' {
			nv, ch, err := editArray(v, func(el []byte) ([]byte, error) {
				if el[0] != '{' {
					return nil, nil
				}
				ne, ch, err := editObject(el, stripModel)
				if !ch {
					ne = nil
				}
				return ne, err
			})
			if !ch {
				nv = nil
			}
			return memberEdit{value: nv}, err
		}
		return dropAs(m, v, map[string]int{"comfy_org_api_key": 0}), nil
	}
	stripS3 := func(m member, v []byte) (memberEdit, error) {
		return dropAs(m, v, map[string]int{"accessId": 1, "accessSecret": 2}), nil
	}
	obj, changed, err := editObject(msg[start:end], func(m member, v []byte) (memberEdit, error) {
		switch {
		case strings.EqualFold(m.key, "input"):
			nv, err := editInput(v, stripInput)
			return memberEdit{value: nv}, err
		case strings.EqualFold(m.key, "s3Config") && v[0] == '{':
			nv, ch, err := editObject(v, stripS3)
			if !ch {
				nv = nil
			}
			return memberEdit{value: nv}, err
		}
		return memberEdit{}, nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("strip secrets: %w", err)
	}
	var removed []string
	for i, n := range []string{SecretComfyOrgAPIKey, SecretS3AccessID, SecretS3AccessSecret, SecretModelHeaders} {
		if found[i] {
			removed = append(removed, n)
		}
	}
	if !changed {
		return msg, removed, nil
	}
	out := make([]byte, 0, len(msg))
	out = append(append(append(out, msg[:start]...), obj...), msg[end:]...)
	return out, removed, nil
}

// emptySecret reports a value that holds no secret: null or "".
func emptySecret(v []byte) bool {
	return bytes.Equal(v, []byte("null")) || bytes.Equal(v, []byte(`""`))
}

// editInput edits the members of a job's input: an object, or a JSON
// string holding one (worker-comfyui's form), which is re-encoded only
// when its content changed. It returns nil when nothing changed or the
// input is neither.
func editInput(v []byte, edit func(m member, v []byte) (memberEdit, error)) ([]byte, error) {
	switch v[0] {
	case '{':
		nv, changed, err := editObject(v, edit)
		if !changed {
			return nil, err
		}
		return nv, err
	case '"':
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return nil, errBadJSON
		}
		inner := []byte(s)
		if !json.Valid(inner) {
			return nil, nil // DecodeInput refuses it: nothing is read from it
		}
		start, end, ok := trimmedObject(inner)
		if !ok {
			return nil, nil
		}
		obj, changed, err := editObject(inner[start:end], edit)
		if err != nil || !changed {
			return nil, err
		}
		return marshalString(string(inner[:start]) + string(obj) + string(inner[end:])), nil
	}
	return nil, nil
}

// withInputMember returns the input raw (an object, or a JSON string
// holding one) with the member name set to value, first, in place of any
// member the decoders would read under that name.
func withInputMember(raw json.RawMessage, name string, value []byte) (json.RawMessage, error) {
	dropName := func(m member, _ []byte) (memberEdit, error) {
		return memberEdit{drop: strings.EqualFold(m.key, name)}, nil
	}
	set := func(obj []byte) ([]byte, error) {
		obj, _, err := editObject(obj, dropName)
		if err != nil {
			return nil, err
		}
		return insertMember(obj, name, value), nil
	}
	start, end, ok := trimmedObject(raw)
	if ok {
		obj, err := set(raw[start:end])
		if err != nil {
			return nil, err
		}
		return append(append(append([]byte{}, raw[:start]...), obj...), raw[end:]...), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		inner := []byte(s)
		if start, end, ok := trimmedObject(inner); ok && json.Valid(inner) {
			obj, err := set(inner[start:end])
			if err != nil {
				return nil, err
			}
			return marshalString(string(inner[:start]) + string(obj) + string(inner[end:])), nil
		}
	}
	return nil, errorf("the job's input is %s, not an object to put %s in", JSONKind(raw), name)
}

// Secrets are the secrets given back to a dead letter's job when it is
// replayed (POST /dlq/{seq}/replay, `comfyfleet dlq replay --secrets`),
// in the shape of RunPod's request body:
//
//	{"comfy_org_api_key": "…", "s3Config": {"accessId": "…", "accessSecret": "…"}}
//
// Either may be left out. The s3Config gives credentials only: the bucket,
// endpoint and object path stay those of the dead letter.
type Secrets struct {
	ComfyOrgAPIKey string         `json:"comfy_org_api_key,omitempty"`
	S3Config       *S3Credentials `json:"s3Config,omitempty"`
}

// S3Credentials are the secret part of an [S3Config].
type S3Credentials struct {
	AccessID     string `json:"accessId"`
	AccessSecret string `json:"accessSecret"`
}

// maxSecretLen bounds each secret of a replay.
const maxSecretLen = 4096

// DecodeSecrets reads a replay's secrets. An empty body (or null) gives
// nil: the replay runs with the worker's own settings. Errors are
// *InputError naming the field, never its value.
func DecodeSecrets(data []byte) (*Secrets, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || bytes.Equal(data, []byte("null")) {
		return nil, nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return nil, errorf(`secrets must be a JSON object such as {"comfy_org_api_key": "…", "s3Config": {"accessId": "…", "accessSecret": "…"}}: %s`, DescribeJSONError(err))
	}
	s := &Secrets{}
	str := func(where string, v json.RawMessage, dst *string) error {
		if err := json.Unmarshal(v, dst); err != nil {
			return errorf("%s must be a string, got %s", where, JSONKind(v))
		}
		if len(*dst) > maxSecretLen {
			return errorf("%s is %d bytes long, the limit is %d", where, len(*dst), maxSecretLen)
		}
		return nil
	}
	for name, v := range fields {
		switch name {
		case "comfy_org_api_key":
			if err := str(name, v, &s.ComfyOrgAPIKey); err != nil {
				return nil, err
			}
		case "s3Config":
			var c map[string]json.RawMessage
			if err := json.Unmarshal(v, &c); err != nil || c == nil {
				return nil, errorf("s3Config must be an object with accessId and accessSecret, got %s", JSONKind(v))
			}
			s.S3Config = &S3Credentials{}
			for k, cv := range c {
				var err error
				switch k {
				case "accessId":
					err = str("s3Config.accessId", cv, &s.S3Config.AccessID)
				case "accessSecret":
					err = str("s3Config.accessSecret", cv, &s.S3Config.AccessSecret)
				default:
					err = errorf("s3Config.%s: a replay gives credentials only (accessId, accessSecret); the bucket and endpoint stay the dead letter's", k)
				}
				if err != nil {
					return nil, err
				}
			}
			if s.S3Config.AccessID == "" || s.S3Config.AccessSecret == "" {
				return nil, errorf("s3Config needs both accessId and accessSecret")
			}
		default:
			return nil, errorf("%q is not a secret of a job; give comfy_org_api_key and/or s3Config", name)
		}
	}
	if s.ComfyOrgAPIKey == "" && s.S3Config == nil {
		return nil, nil
	}
	return s, nil
}

// Where a replayed job's secrets come from, per secret of [Secrets]
// ("comfy_org_api_key", "s3Config").
type SecretSource string

const (
	// SecretSupplied: the replay's request gave it.
	SecretSupplied SecretSource = "supplied"
	// SecretWorker: the worker's own settings, COMFY_ORG_API_KEY for the
	// key; BUCKET_* for the outputs, the job's s3Config being dropped.
	SecretWorker SecretSource = "worker"
)

// RestoreSecrets gives a dead letter's job, which lost the secrets named
// in removed (the names of [DLQSecretsRemovedHeader]), those that s
// supplies (nil: none); the others come from the worker's own settings,
// which for an s3Config whose credentials were removed means it is
// dropped (the outputs go where the worker's BUCKET_* say). Supplied
// secrets replace what the message still has (a dead letter written
// before secrets were removed). It says where each secret comes from, by
// its name in [Secrets].
func (j *Job) RestoreSecrets(removed []string, s *Secrets) (map[string]SecretSource, error) {
	from := map[string]SecretSource{}
	lostKey, lostS3 := false, false
	for _, n := range removed {
		switch n {
		case SecretComfyOrgAPIKey:
			lostKey = true
		case SecretS3AccessID, SecretS3AccessSecret:
			lostS3 = true
		}
	}
	if s == nil {
		s = &Secrets{}
	}
	switch {
	case s.ComfyOrgAPIKey != "":
		in, err := withInputMember(j.Input, "comfy_org_api_key", marshalString(s.ComfyOrgAPIKey))
		if err != nil {
			return nil, err
		}
		j.Input = in
		from["comfy_org_api_key"] = SecretSupplied
	case lostKey:
		from["comfy_org_api_key"] = SecretWorker
	}
	switch {
	case s.S3Config != nil:
		if j.S3Config == nil {
			return nil, errorf("the job has no s3Config to give credentials to; leave s3Config out")
		}
		c := *j.S3Config
		c.AccessID, c.AccessSecret = s.S3Config.AccessID, s.S3Config.AccessSecret
		j.S3Config = &c
		from["s3Config"] = SecretSupplied
	case lostS3:
		j.S3Config = nil
		from["s3Config"] = SecretWorker
	}
	return from, nil
}
