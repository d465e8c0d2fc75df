package comfysim

import (
	"encoding/binary"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/node"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// runner is the executor as one running node sees it: the interrupt check,
// the step delay and faults, the progress bar and the saving of files.
type runner struct {
	ex     *execution
	class  *node.Class
	nodeID string
}

var _ node.Executor = (*runner)(nil)

// Sleep waits d unless the prompt is interrupted or abandoned first.
func (r *runner) Sleep(d time.Duration) error { return r.ex.sleep(d) }

// StepDelay is the current KSampler per-step sleep.
func (r *runner) StepDelay() time.Duration { return r.ex.s.currentStepDelay() }

// AtStep applies the fault-injection hooks that act at a sampler step.
func (r *runner) AtStep(step int) error { return r.ex.stepFaults(r.class, step) }

// Previews reports whether the prompt's preview_method asks for previews.
func (r *runner) Previews() bool { return r.ex.previews }

// ProgressBar starts a progress bar of total steps for the node.
func (r *runner) ProgressBar(total int, png bool) node.ProgressBar {
	return &progressHook{ex: r.ex, nodeID: r.nodeID, total: total, lastSent: -1, png: png}
}

// ProgressText is PromptServer.send_progress_text: a binary TEXT frame (3)
// of the node id's length, the node id and the text, to the prompt's client.
func (r *runner) ProgressText(text string) error {
	frame := binary.BigEndian.AppendUint32(nil, 3)
	frame = binary.BigEndian.AppendUint32(frame, uint32(len(r.nodeID)))
	frame = append(frame, r.nodeID...)
	frame = append(frame, text...)
	return r.ex.sendBinary(r.ex.target(), frame)
}

// SaveImagePath is folder_paths.get_save_image_path in output/ or temp/.
func (r *runner) SaveImagePath(folderType, prefix string, width, height int, where string) (node.SavePath, error) {
	s := r.ex.s
	return saveImagePath(s.counters, prefix, s.dirByType(folderType), width, height, where)
}

// WriteFile writes a file the node saves.
func (r *runner) WriteFile(path string, data []byte) error { return r.ex.s.writeOutput(path, data) }

// Saved records the next counter of sp's file-name sequence.
func (r *runner) Saved(sp node.SavePath, next int64) { r.ex.s.counters.wrote(sp, next) }

// progressHook is ProgressBar.update_absolute plus the server hook: throttled
// like v0.9.2 (first, final and preview ticks always; otherwise at least 100 ms
// and 0.5 % apart), each sent tick being progress_state, [type 4 preview],
// progress, [type 1 preview].
type progressHook struct {
	ex       *execution
	nodeID   string
	total    int
	lastSent int
	lastTime time.Time
	// png marks previews as PNG (SaveImageWebsocket's full-size images)
	// instead of sampler JPEGs.
	png bool
}

var _ node.ProgressBar = (*progressHook)(nil)

// Update is ProgressBar.update_absolute(value) with an optional preview.
func (p *progressHook) Update(value int, preview func() []byte) error {
	ex := p.ex
	if err := ex.checkInterrupt(); err != nil {
		return err
	}
	if value > p.total {
		value = p.total
	}
	var img []byte
	if preview != nil {
		img = preview()
	}
	now := time.Now()
	first := p.lastSent < 0
	final := value >= p.total
	if img == nil && !first && !final {
		pct := 100.0
		if p.total > 0 {
			pct = float64(value-max(0, p.lastSent)) / float64(p.total) * 100
		}
		if now.Sub(p.lastTime) < 100*time.Millisecond || pct < 0.5 {
			return nil
		}
	}
	p.lastSent, p.lastTime = value, now

	id := p.nodeID
	st := ex.ensureProgress(id)
	st.state, st.value, st.max = "running", value, p.total
	if err := ex.sendProgressState(); err != nil {
		return err
	}
	meta := ex.s.hub.supportsFeature(ex.clientID, "supports_preview_metadata")
	if img != nil && meta {
		imageType := "image/jpeg"
		if p.png {
			imageType = "image/png"
		}
		md := pyvalue.Encode(pyvalue.NewDict("node_id", id, "prompt_id", ex.item.id, "display_node_id", id,
			"parent_node_id", nil, "real_node_id", id, "image_type", imageType))
		frameBytes := binary.BigEndian.AppendUint32(nil, 4)
		frameBytes = binary.BigEndian.AppendUint32(frameBytes, uint32(len(md)))
		frameBytes = append(frameBytes, md...)
		frameBytes = append(frameBytes, img...)
		if err := ex.sendBinary(ex.target(), frameBytes); err != nil {
			return err
		}
	}
	if err := ex.send(ex.target(), "progress", pyvalue.NewDict("value", value, "max", p.total, "prompt_id", ex.item.id, "node", id)); err != nil {
		return err
	}
	if img != nil && !meta {
		format := uint32(1) // JPEG
		if p.png {
			format = 2
		}
		frameBytes := binary.BigEndian.AppendUint32(nil, 1)
		frameBytes = binary.BigEndian.AppendUint32(frameBytes, format)
		frameBytes = append(frameBytes, img...)
		return ex.sendBinary(ex.target(), frameBytes)
	}
	return nil
}
