package comfysim

import (
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// The emulator's VRAM holds one model at a time, as a GPU too small for
// two checkpoints does: "the model" is the set of model files a prompt's
// loader nodes name (one checkpoint, or a flux-style UNET, text encoders
// and VAE, with any LoRA). A prompt whose set differs from the loaded one
// evicts it and pays Config.ModelLoadDelay once, inside the first node it
// executes (an interrupt cuts the load short and leaves nothing loaded);
// the same set again pays nothing, and a prompt that names no model file
// leaves what is loaded alone. POST /free with unload_models (or
// free_memory alone, as ComfyUI reads it) and Restart empty the VRAM.
// Stats counts the loads and names what is loaded.

// modelInput is the loader input that names a model file: the rule the
// fleet's routing reads workflows by (internal/fleet), so what the worker
// believes warm is what the emulator holds.
var modelInput = regexp.MustCompile(`^[a-z_]+_name[0-9]*$`)

// promptModels lists, sorted and without repeats, the model files the
// loader nodes of a validated prompt name; links and non-strings are not
// names.
func promptModels(prompt *pyvalue.Dict) []string {
	var out []string
	for _, id := range prompt.Keys() {
		v, _ := prompt.Get(id)
		nd, ok := v.(*pyvalue.Dict)
		if !ok {
			continue
		}
		ct, _ := nd.Get("class_type")
		class, _ := ct.(string)
		if !strings.Contains(class, "Loader") {
			continue
		}
		in, _ := nd.Get("inputs")
		inputs, ok := in.(*pyvalue.Dict)
		if !ok {
			continue
		}
		for _, name := range inputs.Keys() {
			if !modelInput.MatchString(name) {
				continue
			}
			f, _ := inputs.Get(name)
			if file, ok := f.(string); ok && file != "" && !slices.Contains(out, file) {
				out = append(out, file)
			}
		}
	}
	slices.Sort(out)
	return out
}

// SetModelLoadDelay changes the time a model load takes (negative or 0:
// none). It applies from the next load.
func (s *Server) SetModelLoadDelay(d time.Duration) {
	s.loadDelay.Store(int64(max(d, 0)))
}

func (s *Server) currentLoadDelay() time.Duration { return time.Duration(s.loadDelay.Load()) }

// loadModels makes the prompt's models the loaded ones, paying the load
// delay when they are not; it acts once per prompt, at its first executed
// node.
func (ex *execution) loadModels() error {
	if ex.modelsLoaded {
		return nil
	}
	ex.modelsLoaded = true
	need := promptModels(ex.item.prompt)
	if len(need) == 0 {
		return nil
	}
	s := ex.s
	s.mu.Lock()
	if s.epoch != ex.epoch {
		s.mu.Unlock()
		return errAborted
	}
	if slices.Equal(s.loaded, need) {
		s.mu.Unlock()
		return nil
	}
	s.loaded = nil // evicted before the new one is in
	s.mu.Unlock()
	if err := ex.sleep(s.currentLoadDelay()); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.epoch != ex.epoch {
		return errAborted
	}
	s.loaded = need
	s.stats.modelLoads.Add(1)
	return nil
}
