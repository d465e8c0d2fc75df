// Package modelcache is the worker's content-addressed, budgeted model
// cache: model files a job names by URL (a loader input's value, or an
// entry of input.models) are fetched once into the ComfyUI model folder
// they belong to, under a name that keeps the original file name readable
// and ends in the first hex digits of the file's SHA-256
// ("my-lora-3f9a0c1b2d4e.safetensors"), and kept within a disk budget.
//
// One download per URL however many jobs want it at once (single
// flight): the others wait on it and see its progress. A download goes
// through its own SSRF guard; the worker's Hugging Face and CivitAI
// tokens are sent only to those hosts, a request's own headers only to
// its URL's host, and never on a redirect to another host. Bytes go to a
// partial file beside the models folder (never in it, so ComfyUI never
// lists half a file), which a later attempt resumes with a Range request,
// and are renamed into place once complete and verified (size cap,
// sha256 when given). An index on disk (index.json, written atomically)
// keeps the cache across restarts. Least recently used files are evicted
// to stay within the budget, never one a job holds (Handle.Release).
package modelcache
