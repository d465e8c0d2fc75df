package proto

// Output is a job's result, worker-comfyui 5.x's shape plus the kinds it
// drops. Clients ignore unknown fields.
type Output struct {
	// Images is always present on success (possibly empty).
	Images []OutputItem `json:"images"`
	Videos []OutputItem `json:"videos,omitempty"`
	Audio  []OutputItem `json:"audio,omitempty"`
	Files  []OutputItem `json:"files,omitempty"`
	Text   []OutputItem `json:"text,omitempty"`
	// Errors are non-fatal problems (an output that could not be fetched).
	Errors []string `json:"errors,omitempty"`
	// Status is "success_no_images" when nothing was produced but no error
	// occurred, as worker-comfyui says.
	Status string `json:"status,omitempty"`
}

// Output item types.
const (
	ItemBase64 = "base64" // Data is base64 (filled from Blob when served)
	ItemS3URL  = "s3_url" // Data is a URL
	ItemText   = "text"   // Data is the text itself
)

// StatusNoImages is Output.Status when the job produced nothing.
const StatusNoImages = "success_no_images"

// OutputItem is one output file or text.
type OutputItem struct {
	Filename  string `json:"filename"`
	Type      string `json:"type"`
	Data      string `json:"data"`
	NodeID    string `json:"node_id,omitempty"`
	Subfolder string `json:"subfolder,omitempty"`
	Mime      string `json:"mime,omitempty"`
	Size      int64  `json:"size,omitempty"`
	// Blob is the blob-store key of the bytes of a base64 item. In the
	// status record Data is empty and Blob is set; whoever serves the
	// output reads the blob and fills Data.
	Blob string `json:"blob,omitempty"`
}

// Failure is the output of a failed job: worker-comfyui's {error, details}.
type Failure struct {
	Error   string   `json:"error"`
	Details []string `json:"details,omitempty"`
}
