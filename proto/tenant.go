package proto

import "strings"

// The blob store keys of input files. Inputs live under their tenant's
// namespace, "in/<tenant>/", so that a job can load only its own tenant's
// files: a job that names a blob key outside it fails admission. Outputs
// ("out/<job>/…") are never inputs.
const inputBlobPrefix = "in/"

// InputBlobPrefix is the namespace of a tenant's input files in the blob
// store, "in/<tenant>/"; tenant "" means [DefaultTenant].
func InputBlobPrefix(tenant string) string { return inputBlobPrefix + orDefaultTenant(tenant) + "/" }

// InputBlobKey is where an input file of a job is stored:
// "in/<tenant>/<job>/<name>".
func InputBlobKey(tenant, jobID, name string) string {
	return InputBlobPrefix(tenant) + jobID + "/" + name
}

// CheckBlobs reports the first input image given by a blob key outside
// the tenant's namespace ([InputBlobPrefix]), or nil. Such a key would
// load another tenant's file, or a job's output.
func (in *Input) CheckBlobs(tenant string) error {
	prefix := InputBlobPrefix(tenant)
	for i, img := range in.Images {
		if img.Blob == "" {
			continue
		}
		rest, ok := strings.CutPrefix(img.Blob, prefix)
		if !ok || rest == "" || strings.Contains("/"+rest+"/", "/../") {
			return errorf("images[%d].blob: key %q is not in this tenant's inputs (%s…); store the file under that prefix or send it as base64", i, img.Blob, prefix)
		}
	}
	return nil
}

// CheckTenant reports why a job message cannot come from tenant, or nil:
// a message may leave its tenant out, which the submit subject then gives,
// but not name another one.
func (j *Job) CheckTenant(tenant string) error {
	if j.Tenant != "" && j.Tenant != tenant {
		return errorf("field tenant: the message names tenant %q but was submitted as tenant %q (the submit subject decides; leave the field out)", j.Tenant, tenant)
	}
	return nil
}
