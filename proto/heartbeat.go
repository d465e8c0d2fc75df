package proto

import "time"

// Worker states, the State of a [Heartbeat].
const (
	WorkerInitializing = "initializing" // waiting for its ComfyUI, or warming up
	WorkerIdle         = "idle"         // pulling, no job in hand
	WorkerRunning      = "running"      // running a job
	WorkerUnhealthy    = "unhealthy"    // its ComfyUI stopped answering
	WorkerDraining     = "draining"     // told to drain: finishes its jobs in hand, pulls no more
)

// Heartbeat is what a worker says of itself in the Redis hash at
// [WorkerKey], rewritten every few seconds with a short TTL: a worker that
// stops beating disappears. RunPod workers that join through the job-take
// host are announced the same way.
type Heartbeat struct {
	ID   string `json:"id"`
	Pool string `json:"pool"`
	// MorePools are the further pools it serves after Pool (a gpuworker's
	// POOL=a,b), in order.
	MorePools      []string `json:"more_pools,omitempty"`
	State          string   `json:"state"`
	JobID          string   `json:"job_id,omitempty"`
	ComfyUIVersion string   `json:"comfyui_version,omitempty"`
	Device         string   `json:"device,omitempty"`
	VRAMTotal      int64    `json:"vram_total,omitempty"`
	VRAMFree       int64    `json:"vram_free,omitempty"`
	// Progress is the current job's progress, 0 to 1.
	Progress float64 `json:"progress,omitempty"`
	// Models are the model files its ComfyUI offers, by loader input
	// (e.g. "ckpt_name", "lora_name", "vae_name"), read from /object_info.
	Models map[string][]string `json:"models,omitempty"`
	// Warm are the model files of the last workflow it ran: the ones its
	// ComfyUI most likely still holds in memory.
	Warm []string `json:"warm,omitempty"`
	// Cached are the model files it fetched by URL and holds on disk (its
	// model cache): the next job naming one of those URLs needs no
	// download there.
	Cached []CachedModel `json:"cached,omitempty"`
	// LastError is the error of the last job that failed on it (or was
	// given back with a reason).
	LastError string `json:"last_error,omitempty"`
	// Paused are the lanes ([PausedLane]) of its pools it skips because
	// they are paused, as it last read them.
	Paused    []string  `json:"paused,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// HostWorkerID is a worker's id when WORKER_ID is unset: its host name,
// with every character that an id may not hold turned into '-'
// ("gpuworker" for an empty name). The gpuworker and its container's
// health check derive it the same way.
func HostWorkerID(host string) string {
	b := []byte(host)
	for i, c := range b {
		if !(c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			b[i] = '-'
		}
	}
	if len(b) == 0 {
		return "gpuworker"
	}
	if len(b) > maxIDLen {
		b = b[:maxIDLen]
	}
	return string(b)
}
