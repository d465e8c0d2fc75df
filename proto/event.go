package proto

import (
	"encoding/json"
	"time"
)

// EventType says what an [Event] reports.
type EventType string

// The event types.
const (
	// EventStatus reports a status transition; Status is set.
	EventStatus EventType = "status"
	// EventProgress reports execution progress; Progress is set.
	EventProgress EventType = "progress"
	// EventStream carries one chunk a RunPod worker posted to job-stream
	// (a generator handler's yield) in Output; it appears on /stream.
	EventStream EventType = "stream"
	// EventProgressUpdate carries a RunPod worker's progress_update value
	// in Output; it appears on /stream and as an IN_PROGRESS job's output.
	EventProgressUpdate EventType = "progress_update"
	// EventPreview carries a picture of the job in progress in Preview,
	// sent (throttled) when the job's input asks for previews.
	EventPreview EventType = "preview"
)

// Event is published for every status transition and, throttled, for
// progress, on the subject [Event.Subject] names. Consumers must ignore
// unknown types and fields.
type Event struct {
	V     int    `json:"v"`
	JobID string `json:"job_id"`
	// Tenant owns the job; it is the last token of the event's subject.
	Tenant   string    `json:"tenant,omitempty"`
	Type     EventType `json:"type"`
	Time     time.Time `json:"time"`
	Attempt  int       `json:"attempt,omitempty"`
	WorkerID string    `json:"worker_id,omitempty"`
	// Status is the new status of a status event.
	Status Status `json:"status,omitempty"`
	// Error is the failure message of a FAILED or TIMED_OUT status event.
	Error string `json:"error,omitempty"`
	// Progress is set on progress events.
	Progress *Progress `json:"progress,omitempty"`
	// Output is the chunk of a stream or progress_update event, as the
	// RunPod worker posted it.
	Output json.RawMessage `json:"output,omitempty"`
	// Preview is set on preview events.
	Preview *Preview `json:"preview,omitempty"`
}

// Preview is one preview image of a running job.
type Preview struct {
	Node string `json:"node,omitempty"`
	Mime string `json:"mime"`
	// Data is the image, base64.
	Data string `json:"data"`
}

// Progress is a job's progress inside ComfyUI, in the shape worker-comfyui's
// later versions stream: {"type":"progress","value","max","percent","node"}.
type Progress struct {
	Node    string  `json:"node"`
	Value   int64   `json:"value"`
	Max     int64   `json:"max"`
	Percent float64 `json:"percent"`
	// Phase is "" for ComfyUI's sampling progress, [PhaseDownload] for
	// the download of a model by URL, whose bytes Value and Max count
	// (Max -1 while the size is unknown).
	Phase string `json:"phase,omitempty"`
	// URL is the model's URL as [ModelURLKey] gives it, in a download's
	// progress.
	URL string `json:"url,omitempty"`
}

// PhaseDownload is the phase of a model download's progress.
const PhaseDownload = "download"

// Subject is the subject the event is published on: the job's
// [EventSubject] of class final for a terminal status, status for the
// other transitions, progress for everything else. Previews go to
// [PreviewSubject] instead.
func (e *Event) Subject() string {
	switch {
	case e.Type == EventStatus && e.Status.Terminal():
		return EventSubject(e.JobID, EventClassFinal, e.Tenant)
	case e.Type == EventStatus:
		return EventSubject(e.JobID, EventClassStatus, e.Tenant)
	case e.Type == EventPreview:
		return PreviewSubject(e.JobID, e.Tenant)
	}
	return EventSubject(e.JobID, EventClassProgress, e.Tenant)
}

// DecodeEvent decodes an event message. Errors are *InputError.
func DecodeEvent(data []byte) (*Event, error) {
	var e Event
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, errorf("decode event: %s", DescribeJSONError(err))
	}
	if err := ValidID(e.JobID); err != nil {
		return nil, errorf("decode event: field job_id: %v", err)
	}
	if e.Tenant != "" {
		if err := ValidID(e.Tenant); err != nil {
			return nil, errorf("decode event: field tenant: %v", err)
		}
	}
	if e.Type == EventStatus && !e.Status.Valid() {
		return nil, errorf("decode event: field status: %q is not a status", e.Status)
	}
	return &e, nil
}

// Cancel is the payload on [CancelSubject].
type Cancel struct {
	JobID string `json:"job_id"`
}
