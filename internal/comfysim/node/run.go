package node

import (
	"fmt"
	"math"
	"math/big"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// Host is what node classes need of the emulated ComfyUI process, in their
// schemas and validation as well as while they run: the model lists and the
// input folder (folder_paths). The server implements it.
type Host interface {
	// ModelFiles lists a model folder's files ("checkpoints", "vae",
	// "loras", ...), as folder_paths.get_filename_list.
	ModelFiles(folder string) []string
	// InputImages lists the image files at the root of input/, sorted
	// (LoadImage's combo).
	InputImages() []string
	// AnnotatedPath is folder_paths.get_annotated_filepath with input/ as
	// the default folder: "x.png [output]" names a file in output/. It
	// fails for a path outside its folder.
	AnnotatedPath(name string) (string, error)
	// AnnotatedExists is folder_paths.exists_annotated_filepath.
	AnnotatedExists(name string) bool
}

// Executor is what a running node needs of the executor that runs it: the
// interrupt check and step timing of comfy.model_management, the progress
// bar of comfy.utils, and folder_paths' saving. The server implements it for
// each node it executes.
type Executor interface {
	// Sleep waits d, returning early with the executor's error when the
	// prompt is interrupted or abandoned (ComfyUI checks the flag in every
	// model op, so it reacts at once); the node returns that error as is.
	Sleep(d time.Duration) error
	// StepDelay is how long one sampler step takes now.
	StepDelay() time.Duration
	// AtStep is called when a sampler reaches step (from 1); the fault
	// injection acts there. A non-nil error ends the node with it.
	AtStep(step int) error
	// Previews reports whether the prompt asked for sampler previews
	// (extra_data preview_method).
	Previews() bool
	// ProgressBar is comfy.utils.ProgressBar(total) with the server's
	// progress hook; png marks its preview images as PNG instead of JPEG.
	ProgressBar(total int, png bool) ProgressBar
	// SaveImagePath is folder_paths.get_save_image_path in the folder of
	// folderType ("output" or "temp"), for an image of width x height;
	// where names the function for the traceback of its exception.
	SaveImagePath(folderType, prefix string, width, height int, where string) (SavePath, error)
	// WriteFile writes a file the node saves.
	WriteFile(path string, data []byte) error
	// Saved records that the files of sp up to counter next-1 exist, so the
	// next save need not list the folder.
	Saved(sp SavePath, next int64)
	// ProgressText is PromptServer.send_progress_text for the running
	// node: a TEXT binary frame with its id.
	ProgressText(text string) error
}

// ProgressBar is comfy.utils.ProgressBar.
type ProgressBar interface {
	// Update is update_absolute(value) with the preview image preview
	// returns (nil for none); preview may be nil. The error is the
	// executor's (interrupted, abandoned) and ends the node.
	Update(value int, preview func() []byte) error
}

// SavePath is what folder_paths.get_save_image_path returns.
type SavePath struct {
	// Folder is the absolute folder the files go to; Filename is the
	// file-name stem, Subfolder the folder relative to output/ (or temp/).
	Folder, Filename, Subfolder string
	// Prefix is filename_prefix after the %width%-style substitutions.
	Prefix string
	// Counter is the number of the first file to write.
	Counter int64
}

// Run is one execution of a node: what its Python function receives (the
// inputs with links resolved, the hidden PROMPT and EXTRA_PNGINFO, the
// class instance) and the services of the process and executor.
type Run struct {
	Class *Class
	// ID is the node's id in the prompt.
	ID string
	// Inputs are the input values, links resolved; validation guarantees
	// the types of declared constant inputs.
	Inputs map[string]any
	// Prompt is the hidden PROMPT: the whole prompt.
	Prompt *pyvalue.Dict
	// ExtraPNGInfo is the hidden EXTRA_PNGINFO (nil when absent).
	ExtraPNGInfo any
	// Object is the class instance the executor's object cache keeps for
	// this node (Class.NewObject).
	Object *Object
	Host   Host
	Exec   Executor
}

// --- input accessors (validation guarantees the types of declared inputs) ---

func (x *Run) str(name string) string {
	s, _ := x.Inputs[name].(string)
	return s
}

func (x *Run) int(name string) *big.Int {
	switch t := x.Inputs[name].(type) {
	case *big.Int:
		return t
	case bool:
		if t {
			return big.NewInt(1)
		}
	}
	return big.NewInt(0)
}

func (x *Run) intSmall(name string) int {
	n := x.int(name)
	if !n.IsInt64() {
		return math.MaxInt32
	}
	return int(n.Int64())
}

func (x *Run) float(name string) float64 {
	f, _ := pyvalue.Float(x.Inputs[name])
	return f
}

// noneInput raises the error a Python node raises when a linked input
// arrived as None (its source produced nothing for that slot).
func (x *Run) noneInput(name, attr string) error {
	return Raise("AttributeError", fmt.Sprintf("'NoneType' object has no attribute '%s'", attr), x.Class.FuncName())
}

// images returns the IMAGE input or the error ComfyUI would raise for None.
func (x *Run) images(name string) (*imageVal, error) {
	img, ok := x.Inputs[name].(*imageVal)
	if !ok || len(img.frames) == 0 {
		return nil, Raise("TypeError", "'NoneType' object is not subscriptable", x.Class.FuncName())
	}
	return img, nil
}
