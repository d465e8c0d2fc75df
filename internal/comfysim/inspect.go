package comfysim

import "encoding/json"

// What the emulator received, for tests that check what a client sent.
// Real ComfyUI keeps no such record; like the fault surface, the worker
// never uses it.

// maxRecords bounds each record list; the oldest records are dropped.
const maxRecords = 10000

// UploadRecord is one file accepted by POST /upload/image.
type UploadRecord struct {
	// Filename is the part's file name as sent; Name is the name stored
	// (they differ when ComfyUI renamed a clash).
	Filename    string `json:"filename"`
	Name        string `json:"name"`
	Subfolder   string `json:"subfolder"`
	Type        string `json:"type"`
	ContentType string `json:"content_type"` // the part's Content-Type header
	Overwrite   string `json:"overwrite"`    // the overwrite field as sent ("" when absent)
	Size        int    `json:"size"`
}

// PromptRecord is one prompt accepted by POST /prompt.
type PromptRecord struct {
	PromptID string `json:"prompt_id"`
	ClientID string `json:"client_id"`
	// ExtraData is extra_data as received, sensitive keys (the Comfy.org
	// API key) included, which ComfyUI keeps out of /queue and /history.
	ExtraData json.RawMessage `json:"extra_data"`
}

// Uploads returns the uploads accepted so far, oldest first.
func (s *Server) Uploads() []UploadRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]UploadRecord(nil), s.uploads...)
}

// Prompts returns the prompts accepted so far, oldest first.
func (s *Server) Prompts() []PromptRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]PromptRecord(nil), s.prompts...)
}

func (s *Server) recordUpload(r UploadRecord) {
	s.mu.Lock()
	s.uploads = appendBounded(s.uploads, r)
	s.mu.Unlock()
	s.stats.uploads.Add(1)
}

func (s *Server) recordPromptLocked(r PromptRecord) {
	s.prompts = appendBounded(s.prompts, r)
}

func appendBounded[T any](list []T, v T) []T {
	if len(list) >= maxRecords {
		list = append(list[:0], list[len(list)-maxRecords+1:]...)
	}
	return append(list, v)
}
