package comfysim

import "github.com/comfyfleet/comfyfleet/internal/comfysim/node"

// nodeHost is the emulated process as node classes see it, in their schemas
// and validation as well as while they run.
type nodeHost struct{ s *Server }

var _ node.Host = nodeHost{}

// ModelFiles lists a model folder's files.
func (h nodeHost) ModelFiles(folder string) []string { return h.s.modelFiles(folder) }

// InputImages lists the image files at the root of input/.
func (h nodeHost) InputImages() []string { return h.s.inputImages() }

// AnnotatedPath resolves an annotated file name, input/ by default.
func (h nodeHost) AnnotatedPath(name string) (string, error) {
	return h.s.annotatedPath(name, h.s.inputDir)
}

// AnnotatedExists reports whether an annotated file name exists.
func (h nodeHost) AnnotatedExists(name string) bool { return h.s.annotatedExists(name) }
