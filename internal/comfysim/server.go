package comfysim

import (
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/node"
)

// ComfyUIVersion is the version the emulator reports and behaves as.
const ComfyUIVersion = "0.27.0"

// DefaultCheckpoint is the checkpoint list used when Config.Checkpoints is nil.
const DefaultCheckpoint = "v1-5-pruned-emaonly.safetensors"

// The model files of a fresh emulator besides DefaultCheckpoint: the files of
// the upstream flux1-dev image (reference/worker-comfyui.md §5.3).
var (
	DefaultDiffusionModels = []string{"flux1-dev.safetensors"}
	DefaultTextEncoders    = []string{"clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors"}
	DefaultVAEs            = []string{"ae.safetensors"}
)

// DefaultStepDelay is the KSampler per-step sleep when Config.StepDelay is 0.
const DefaultStepDelay = 5 * time.Millisecond

// maxUploadSize is aiohttp's client_max_size with ComfyUI's default 100 MB.
const maxUploadSize = 100 * 1024 * 1024

// Config configures an emulator. The zero value is usable.
type Config struct {
	// Dir is the root folder holding input/, output/ and temp/. Empty means
	// a new temporary directory, removed by Close.
	Dir string
	// Checkpoints are the ckpt_name options of CheckpointLoaderSimple, as if
	// they were the files in models/checkpoints. Nil means
	// []string{DefaultCheckpoint}.
	Checkpoints []string
	// DiffusionModels are the files in models/diffusion_models (UNETLoader's
	// unet_name); nil means DefaultDiffusionModels, empty means none.
	DiffusionModels []string
	// TextEncoders are the files in models/text_encoders (DualCLIPLoader's
	// clip_name1 and clip_name2); nil means DefaultTextEncoders.
	TextEncoders []string
	// VAEs are the files in models/vae (VAELoader's vae_name, which also
	// offers "pixel_space"); nil means DefaultVAEs.
	VAEs []string
	// Loras are the files in models/loras (LoraLoader's lora_name); nil
	// means none.
	Loras []string
	// ModelsDir, when set, is a models folder as ComfyUI's: the files in
	// its subfolders (ModelsDir/loras/x.safetensors, and subfolders of
	// those) are offered besides the lists above, read afresh whenever a
	// list is asked for, as ComfyUI rereads a folder that changed; hidden
	// files and files without a model extension are not. clip/ counts as
	// text_encoders/ and unet/ as diffusion_models/, as in ComfyUI.
	ModelsDir string
	// StepDelay is the sleep per KSampler step: 0 means DefaultStepDelay,
	// negative means no sleep.
	StepDelay time.Duration
	// ModelLoadDelay is the time a prompt takes to load models other than
	// the ones in VRAM, which holds one prompt's models at a time
	// (vram.go); 0 or negative means loads take no time (they are still
	// counted).
	ModelLoadDelay time.Duration
	// Logger receives the emulator's logs; nil means zap.NewNop().
	Logger *zap.Logger
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	for name, list := range map[string][]string{"Checkpoints": c.Checkpoints, "DiffusionModels": c.DiffusionModels,
		"TextEncoders": c.TextEncoders, "VAEs": c.VAEs, "Loras": c.Loras} {
		for _, f := range list {
			if f == "" {
				return fmt.Errorf("comfysim: %s: empty file name", name)
			}
		}
	}
	return nil
}

// Server is one emulated ComfyUI process: its HTTP API and WebSocket
// (Handler), one executor goroutine running one prompt at a time, and a
// fault-injection surface (ControlHandler and the Set*/Drop*/Restart methods).
//
// Shutdown order (Close): mark closed and wake the executor; abort the running
// prompt; wait for the executor to return; close every WebSocket; remove the
// temporary root if the server created it.
type Server struct {
	log         *zap.Logger
	root        string
	ownRoot     bool
	inputDir    string
	outputDir   string
	tempDir     string
	checkpoints []string
	models      map[string][]string // model folder -> files, besides checkpoints
	modelsDir   string              // Config.ModelsDir
	nodes       *node.Registry
	host        node.Host // the Server as node classes see it
	hub         *hub
	counters    *counterCache

	mu   sync.Mutex // guards everything below up to the blank line
	cond *sync.Cond // the executor waits on it for work or flags
	// number is server.number, the counter of POST /prompt.
	number      int64
	queue       promptHeap
	seq         uint64 // tie-break for equal (number, prompt_id)
	running     *queueItem
	history     *historyStore
	freeMemory  bool     // POST /free flag, consumed by the executor
	unload      bool     // POST /free unload_models flag, consumed by the executor
	loaded      []string // the model files in VRAM (vram.go), sorted; nil: none
	closed      bool
	epoch       uint64 // bumped by Restart; a prompt of an older epoch is abandoned
	interrupted bool   // nodes.interrupt_processing flag
	clientID    any    // server.client_id of the running prompt (nil = none)
	lastNodeID  any    // server.last_node_id (display id), nil when none
	cache       *outputCache
	objects     map[[2]string]*node.Object
	fault       Fault
	faultUses   int  // executions the FailClass fault has caused
	holdQueue   bool // tests: the executor takes no new prompt while set
	uploads     []UploadRecord
	prompts     []PromptRecord

	interruptCh chan struct{} // wakes a sampler sleeping between steps
	down        atomic.Bool
	stepDelay   atomic.Int64
	loadDelay   atomic.Int64
	stats       statCounters

	executorDone chan struct{}
	closeOnce    sync.Once
}

type statCounters struct {
	queued, executed, succeeded, failed, interrupted, aborted, restarts atomic.Int64
	interruptRequests, freeRequests, uploads, socketDrops               atomic.Int64
	modelLoads                                                          atomic.Int64
}

// Stats is a snapshot of the emulator's counters.
type Stats struct {
	PromptsQueued      int64  `json:"prompts_queued"`      // accepted by POST /prompt
	PromptsExecuted    int64  `json:"prompts_executed"`    // finished with a history entry
	PromptsSucceeded   int64  `json:"prompts_succeeded"`   // history status "success"
	PromptsFailed      int64  `json:"prompts_failed"`      // ended with execution_error
	PromptsInterrupted int64  `json:"prompts_interrupted"` // ended with execution_interrupted
	PromptsAborted     int64  `json:"prompts_aborted"`     // lost to Restart while running
	Restarts           int64  `json:"restarts"`
	InterruptRequests  int64  `json:"interrupt_requests"` // POST /interrupt calls
	FreeRequests       int64  `json:"free_requests"`      // POST /free calls
	Uploads            int64  `json:"uploads"`            // files accepted by POST /upload/image
	SocketDrops        int64  `json:"socket_drops"`       // DropWebSockets calls (the fault and the control API)
	QueueRemaining     int    `json:"queue_remaining"`    // pending + running
	Running            string `json:"running"`            // running prompt id, "" when idle
	SocketsOpen        int    `json:"sockets_open"`       // open WebSocket connections
	CacheEntries       int    `json:"cache_entries"`
	Down               bool   `json:"down"`
	// ModelLoads counts the loads of a prompt's models into VRAM, which
	// holds one prompt's models at a time (vram.go); LoadedModels names
	// the files in it now (empty: none).
	ModelLoads   int64    `json:"model_loads"`
	LoadedModels []string `json:"loaded_models"`
}

// New creates the folders and starts the executor goroutine.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	s := &Server{
		log:          log.Named("comfysim"),
		checkpoints:  cfg.Checkpoints,
		modelsDir:    cfg.ModelsDir,
		interruptCh:  make(chan struct{}, 1),
		executorDone: make(chan struct{}),
		history:      newHistoryStore(),
		cache:        newOutputCache(),
		objects:      map[[2]string]*node.Object{},
		counters:     newCounterCache(),
	}
	if s.checkpoints == nil {
		s.checkpoints = []string{DefaultCheckpoint}
	}
	s.checkpoints = append([]string(nil), s.checkpoints...)
	s.models = map[string][]string{
		"diffusion_models": orDefault(cfg.DiffusionModels, DefaultDiffusionModels),
		"text_encoders":    orDefault(cfg.TextEncoders, DefaultTextEncoders),
		"vae":              orDefault(cfg.VAEs, DefaultVAEs),
		"loras":            orDefault(cfg.Loras, nil),
	}
	s.nodes = node.NewRegistry()
	s.host = nodeHost{s}
	s.cond = sync.NewCond(&s.mu)
	s.hub = newHub(s.log)
	s.SetStepDelay(cfg.StepDelay)
	s.SetModelLoadDelay(cfg.ModelLoadDelay)

	s.root = cfg.Dir
	if s.root == "" {
		d, err := os.MkdirTemp("", "comfysim-")
		if err != nil {
			return nil, fmt.Errorf("create root: %w", err)
		}
		s.root, s.ownRoot = d, true
	}
	abs, err := filepath.Abs(s.root)
	if err != nil {
		return nil, fmt.Errorf("resolve root %s: %w", s.root, err)
	}
	s.root = abs
	s.inputDir = filepath.Join(abs, "input")
	s.outputDir = filepath.Join(abs, "output")
	s.tempDir = filepath.Join(abs, "temp")
	for _, d := range []string{s.inputDir, s.outputDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	// ComfyUI wipes temp/ at start.
	if err := resetDir(s.tempDir); err != nil {
		return nil, err
	}
	go s.executorLoop()
	s.log.Info("emulator started", zap.String("root", s.root), zap.Strings("checkpoints", s.checkpoints))
	return s, nil
}

// orDefault copies list, or def when list is nil.
func orDefault(list, def []string) []string {
	if list == nil {
		list = def
	}
	return append([]string{}, list...)
}

// modelFiles lists a model folder's files as folder_paths.get_filename_list.
func (s *Server) modelFiles(folder string) []string {
	list := s.models[folder]
	if folder == "checkpoints" {
		list = s.checkpoints
	}
	if s.modelsDir == "" {
		return list
	}
	disk := diskModels(s.modelsDir, folder)
	if len(disk) == 0 {
		return list
	}
	out := append(append([]string{}, list...), disk...)
	slices.Sort(out)
	return slices.Compact(out)
}

// modelExtensions are folder_paths.supported_pt_extensions.
var modelExtensions = []string{".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft", ".gguf"}

// legacyFolders are the old folder names ComfyUI still reads for a folder.
var legacyFolders = map[string]string{"text_encoders": "clip", "diffusion_models": "unet"}

// diskModels lists the model files under dir/folder (and its legacy
// name), by their path relative to it with '/', as
// folder_paths.get_filename_list does: hidden files and folders are
// skipped, and files without a model extension.
func diskModels(dir, folder string) []string {
	var out []string
	for _, f := range []string{folder, legacyFolders[folder]} {
		if f == "" {
			continue
		}
		root := filepath.Join(dir, f)
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if p != root && strings.HasPrefix(d.Name(), ".") {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if d.IsDir() || !slices.Contains(modelExtensions, strings.ToLower(filepath.Ext(d.Name()))) {
				return nil
			}
			rel, err := filepath.Rel(root, p)
			if err == nil {
				out = append(out, filepath.ToSlash(rel))
			}
			return nil
		})
	}
	return out
}

func resetDir(d string) error {
	if err := os.RemoveAll(d); err != nil {
		return fmt.Errorf("wipe %s: %w", d, err)
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", d, err)
	}
	return nil
}

// Dir returns the root folder holding input/, output/ and temp/.
func (s *Server) Dir() string { return s.root }

// InputDir returns the input folder, an absolute path: what a gpuworker
// beside a real ComfyUI is given as COMFYUI_INPUT_DIR.
func (s *Server) InputDir() string { return s.inputDir }

// Close stops the executor, closes every socket and removes the temporary
// root it created. It is idempotent.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.epoch++ // abandon the running prompt
		s.cond.Broadcast()
		s.mu.Unlock()
		s.wakeSampler()
		<-s.executorDone
		s.hub.closeAll(true)
		if s.ownRoot {
			err = os.RemoveAll(s.root)
		}
	})
	return err
}

// SetStepDelay changes the KSampler per-step sleep (0 = DefaultStepDelay,
// negative = none). It applies from the next step.
func (s *Server) SetStepDelay(d time.Duration) {
	if d == 0 {
		d = DefaultStepDelay
	}
	s.stepDelay.Store(int64(d))
}

func (s *Server) currentStepDelay() time.Duration {
	d := time.Duration(s.stepDelay.Load())
	if d < 0 {
		return 0
	}
	return d
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	st := Stats{
		QueueRemaining: s.tasksRemainingLocked(),
		CacheEntries:   s.cache.len(),
	}
	if s.running != nil {
		st.Running = s.running.id
	}
	st.LoadedModels = append([]string{}, s.loaded...)
	s.mu.Unlock()
	st.PromptsQueued = s.stats.queued.Load()
	st.PromptsExecuted = s.stats.executed.Load()
	st.PromptsSucceeded = s.stats.succeeded.Load()
	st.PromptsFailed = s.stats.failed.Load()
	st.PromptsInterrupted = s.stats.interrupted.Load()
	st.PromptsAborted = s.stats.aborted.Load()
	st.Restarts = s.stats.restarts.Load()
	st.InterruptRequests = s.stats.interruptRequests.Load()
	st.FreeRequests = s.stats.freeRequests.Load()
	st.Uploads = s.stats.uploads.Load()
	st.SocketDrops = s.stats.socketDrops.Load()
	st.SocketsOpen = s.hub.openCount()
	st.Down = s.down.Load()
	st.ModelLoads = s.stats.modelLoads.Load()
	return st
}

// Handler returns the ComfyUI API: every route of §12.6, each also under /api.
func (s *Server) Handler() http.Handler {
	return s.apiHandler()
}
