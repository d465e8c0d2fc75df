package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Shared-worker isolation. One ComfyUI runs the jobs of every tenant, one
// after the other, and keeps their files in its input, output and temp
// folders, where any workflow could name them. Unless Config.SharedFiles
// says the fleet has a single tenant:
//
//   - a workflow may name only its own inputs (comfyfleet/<job>/…, which
//     the worker puts there) and the files shipped in ComfyUI's input
//     folder: checkFileRefs refuses, before anything is uploaded or
//     queued, a value that reaches into another job's folder, an
//     [output] or [temp] file (a prompt's own outputs are named only while
//     it runs, so such a name is another prompt's), or a path that could
//     leave the input folder ("..", absolute, backslashes);
//   - an attempt's input files are removed when it ends, however it ends
//     (removeInputs).
//
// Real ComfyUI has no route that deletes an input file. The gpuworker runs
// beside it (the same container in Dockerfile.worker, the same pod), so
// with Config.InputDir, ComfyUI's input folder on this host, the worker
// removes the attempt's folder itself; it never removes anything outside
// comfyfleet/<job>/<attempt> and follows no symbolic link. Without it, the
// worker empties every file it uploaded through ComfyUI's own upload route
// (an empty file with overwrite=true, which ComfyUI writes as is): the
// bytes are gone, empty files and their folders stay. Files it could not
// empty because ComfyUI was down are emptied before the next job is taken.

// maxRefProblems caps the lines of a refusal.
const maxRefProblems = 20

// checkFileRefs returns a final failure, in the shape of ComfyUI's
// validation errors as the worker renders them, naming each input of
// workflow that names a file the job may not read (fileRefProblem); nil
// when there is none.
func checkFileRefs(workflow []byte, jobID string) error {
	problems, err := fileRefProblems(workflow, jobID)
	if err != nil {
		return &failure{msg: fmt.Sprintf("Invalid workflow: %v", err)}
	}
	if len(problems) == 0 {
		return nil
	}
	lines := make([]string, 0, min(len(problems), maxRefProblems)+1)
	for _, p := range problems[:min(len(problems), maxRefProblems)] {
		subject := strings.TrimSpace(p.class + " input " + p.input)
		lines = append(lines, fmt.Sprintf("Node %s (errors): %s: %s", p.node, subject, p.why))
	}
	if more := len(problems) - maxRefProblems; more > 0 {
		lines = append(lines, fmt.Sprintf("… and %d more", more))
	}
	return &failure{msg: "Workflow validation failed:\n• " + strings.Join(lines, "\n• ") +
		"\n\nOn this worker a workflow may name only its own input files (the job's images) and the files shipped in ComfyUI's input folder."}
}

// refProblem is an input value that names a file the job may not read.
type refProblem struct {
	inputValue
	why string
}

// fileRefProblems lists the values of workflow's inputs that name a file
// the job may not read, in the workflow's order.
func fileRefProblems(workflow []byte, jobID string) ([]refProblem, error) {
	var out []refProblem
	err := walkInputs(workflow, func(v inputValue) error {
		if why := fileRefProblem(v.val, jobID); why != "" {
			out = append(out, refProblem{inputValue: v, why: why})
		}
		return nil
	})
	return out, err
}

// fileRefProblem says why a workflow value names a file the job may not
// read, or "" when it does not. Every value is judged, as no list of the
// node classes that load files can be complete (custom nodes), so the
// rules are ones text rarely meets: an [output] or [temp] annotation, a
// ".." part, a comfyfleet/ part outside the job's own folder; and, for a
// value of one line that looks like a file path, an absolute path or a
// backslash. A prompt such as "/imagine a cat" or "\(style\)" passes.
func fileRefProblem(v, jobID string) string {
	if !strings.ContainsAny(v, `/\[`) && !strings.Contains(v, "..") {
		// One part, no annotation, no "..": only the jobs' folder itself.
		if strings.EqualFold(strings.TrimRight(v, ". "), inputRoot) {
			return quote(v) + " is in " + inputRoot + "/, where each job's inputs are kept, outside this job's own folder (" + inputRoot + "/" + jobID + "/)"
		}
		return ""
	}
	switch {
	case strings.HasSuffix(v, "[output]"):
		return quote(v) + " names a file in ComfyUI's output folder ([output]); a workflow cannot read outputs: its own are named only while it runs, the others are other jobs'"
	case strings.HasSuffix(v, "[temp]"):
		return quote(v) + " names a file in ComfyUI's temp folder ([temp]); a workflow cannot read temp files: its own are named only while it runs, the others are other jobs'"
	}
	name := v
	if strings.HasSuffix(name, "[input]") {
		// As ComfyUI's annotated_filepath: the annotation and the space
		// before it.
		name = dropRunes(name, utf8.RuneCountInString("[input]")+1)
	}
	parts := strings.FieldsFunc(name, func(r rune) bool { return r == '/' || r == '\\' })
	for _, p := range parts {
		if isDotDot(p) {
			return quote(v) + ` has a ".." part; name files without ".."`
		}
	}
	for i, p := range parts {
		if !strings.EqualFold(strings.TrimRight(p, ". "), inputRoot) {
			continue
		}
		rest := slicesWithout(parts[i+1:], ".")
		if len(rest) >= 2 && rest[0] != jobID {
			return quote(v) + " is in another job's input folder (" + inputRoot + "/" + rest[0] + "/); a job may read only its own inputs"
		}
		if len(rest) == 0 || rest[0] != jobID {
			return quote(v) + " is in " + inputRoot + "/, where each job's inputs are kept, outside this job's own folder (" + inputRoot + "/" + jobID + "/)"
		}
	}
	if strings.ContainsAny(name, "\n\r") {
		return "" // text, not a file name
	}
	switch {
	case isAbsolute(name):
		return quote(v) + " is an absolute path; name a file in ComfyUI's input folder"
	case strings.Contains(name, `\`) && hasExtension(name):
		return quote(v) + ` contains a backslash; separate folders with "/"`
	}
	return ""
}

// isDotDot reports whether a path part means the parent folder: "..", or
// on Windows also "..." or ".. " (trailing dots and spaces are dropped).
func isDotDot(p string) bool {
	return strings.HasPrefix(p, "..") && strings.TrimRight(p, ". ") == ""
}

// isAbsolute reports whether name is an absolute path that could reach
// past the input folder: one that starts with a slash and has another (or
// no space, or a file extension), or a Windows drive or UNC path.
func isAbsolute(name string) bool {
	switch {
	case strings.HasPrefix(name, `\`):
		return true
	case len(name) >= 3 && name[1] == ':' && (name[2] == '/' || name[2] == '\\') &&
		(name[0] >= 'a' && name[0] <= 'z' || name[0] >= 'A' && name[0] <= 'Z'):
		return true
	case !strings.HasPrefix(name, "/"):
		return false
	}
	return strings.Contains(name[1:], "/") || !strings.ContainsAny(name, " \t") || hasExtension(name)
}

// hasExtension reports whether the last part of name ends in a file
// extension: a dot, then 1 to 12 letters and digits with a letter among
// them (".png", ".safetensors", ".mp4"; not "v1.5").
func hasExtension(name string) bool {
	base := name[strings.LastIndexAny(name, `/\`)+1:]
	dot := strings.LastIndexByte(base, '.')
	if dot <= 0 {
		return false
	}
	ext := base[dot+1:]
	if len(ext) == 0 || len(ext) > 12 {
		return false
	}
	letter := false
	for _, c := range []byte(ext) {
		switch {
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			letter = true
		case c >= '0' && c <= '9':
		default:
			return false
		}
	}
	return letter
}

// dropRunes is s without its last n runes (Python's s[:-n]).
func dropRunes(s string, n int) string {
	for ; n > 0 && s != ""; n-- {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	return s
}

func slicesWithout(parts []string, drop string) []string {
	out := make([]string, 0, len(parts))
	for _, p := range parts {
		if p != drop {
			out = append(out, p)
		}
	}
	return out
}

// quote quotes a workflow value for a message, shortened when long.
func quote(v string) string {
	const limit = 120
	if len(v) > limit {
		cut := limit
		for cut > 0 && !utf8.RuneStart(v[cut]) {
			cut--
		}
		return strconv.Quote(v[:cut]) + "…"
	}
	return strconv.Quote(v)
}

// inputFiles are the files one attempt put in ComfyUI's input folder.
type inputFiles struct {
	jobID   string
	attempt int
	mu      sync.Mutex
	// names are the names sent (uploads are made with overwrite=true, so
	// ComfyUI stores each under its name); stored counts the ones
	// ComfyUI confirmed.
	names  []string
	stored int
}

func (f *inputFiles) sent(name string) {
	f.mu.Lock()
	f.names = append(f.names, name)
	f.mu.Unlock()
}

func (f *inputFiles) confirmed() {
	f.mu.Lock()
	f.stored++
	f.mu.Unlock()
}

func (f *inputFiles) subfolder() string { return inputSubfolder(f.jobID, f.attempt) }

// removeTimeout bounds the removal of one attempt's inputs.
const removeTimeout = 10 * time.Second

// removeInputs removes (or, without InputDir, empties) the input files of
// the attempt. It runs at every ending of an attempt, before the ending
// is written, so a job whose status says it ended has left no input in
// ComfyUI.
func (ex *execution) removeInputs(ctx context.Context) {
	f := ex.inputs
	if f == nil || ex.w.cfg.SharedFiles || ex.w.cfg.KeepFiles {
		return
	}
	f.mu.Lock()
	names, stored := f.names, f.stored
	f.mu.Unlock()
	if len(names) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeTimeout)
	defer cancel()
	if dir := ex.w.cfg.InputDir; dir != "" {
		err := removeAttemptFolder(dir, f.jobID, f.attempt)
		switch {
		case err == nil:
			return
		case errors.Is(err, fs.ErrNotExist) && stored == 0:
			return // ComfyUI stored nothing
		case errors.Is(err, fs.ErrNotExist):
			if ex.w.inputDirWarned.CompareAndSwap(false, true) {
				ex.log.Warn("COMFYUI_INPUT_DIR does not hold the job's uploaded inputs: is it this ComfyUI's input folder? Emptying them over HTTP instead",
					zap.String("input_dir", dir), zap.String("subfolder", f.subfolder()))
			}
		default:
			ex.log.Warn("remove the job's inputs from comfyui's input folder; emptying them over HTTP instead", zap.Error(err))
		}
	}
	if left := ex.w.emptyInputs(ctx, f.subfolder(), names); len(left) > 0 {
		ex.w.owe(f.subfolder(), left)
	}
}

// removeAttemptFolder removes <inputDir>/comfyfleet/<job>/<attempt> and
// then the job's folder if that is empty (another attempt may still use
// it). It works inside an os.Root of the comfyfleet folder, which must be
// a real folder, not a link: nothing outside it can be reached, by ".."
// or by a symbolic link. fs.ErrNotExist means the attempt's folder is not
// there.
func removeAttemptFolder(inputDir, jobID string, attempt int) error {
	if err := proto.ValidID(jobID); err != nil {
		return fmt.Errorf("job id: %w", err)
	}
	root, err := os.OpenRoot(inputDir)
	if err != nil {
		return fmt.Errorf("open input folder: %w", err)
	}
	defer root.Close()
	if err := isFolder(root, inputRoot); err != nil {
		return err
	}
	jobs, err := root.OpenRoot(inputRoot)
	if err != nil {
		return fmt.Errorf("open %s: %w", inputRoot, err)
	}
	defer jobs.Close()
	if err := isFolder(jobs, jobID); err != nil {
		return err
	}
	att := path.Join(jobID, strconv.Itoa(attempt))
	if err := isFolder(jobs, att); err != nil {
		return err
	}
	if err := jobs.RemoveAll(att); err != nil {
		return fmt.Errorf("remove %s/%s: %w", inputRoot, att, err)
	}
	_ = jobs.Remove(jobID) // fails while another attempt's folder is in it
	return nil
}

// isFolder checks that name is a folder in root, not a link to one.
func isFolder(root *os.Root, name string) error {
	fi, err := root.Lstat(name)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a folder (%s); nothing removed", name, fi.Mode().Type())
	}
	return nil
}

// emptyInputs overwrites each named file of subfolder with an empty one
// through ComfyUI's upload route and returns the names it could not
// empty because ComfyUI did not answer.
func (w *Worker) emptyInputs(ctx context.Context, subfolder string, names []string) (left []string) {
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	sem := make(chan struct{}, w.cfg.Concurrency)
	for _, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			_, err := w.comfy.UploadImage(ctx, name, subfolder, bytes.NewReader(nil), "application/octet-stream", true)
			if err == nil {
				return
			}
			var se *comfy.StatusError
			if errors.As(err, &se) && se.StatusCode != 502 && se.StatusCode != 503 && se.StatusCode != 504 {
				// ComfyUI answered and refused: trying again will not help.
				w.log.Warn("empty an input file in comfyui", zap.String("subfolder", subfolder), zap.Error(err))
				return
			}
			mu.Lock()
			left = append(left, name)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return left
}

// maxOwed bounds the attempts whose inputs wait to be emptied.
const maxOwed = 1024

// owedInputs are inputs to empty once ComfyUI answers again.
type owedInputs struct {
	mu   sync.Mutex
	list []owed
}

type owed struct {
	subfolder string
	names     []string
}

// owe remembers inputs to empty later.
func (w *Worker) owe(subfolder string, names []string) {
	w.owed.mu.Lock()
	defer w.owed.mu.Unlock()
	if len(w.owed.list) == maxOwed {
		w.log.Warn("too many jobs' inputs wait to be emptied in comfyui; forgetting the oldest",
			zap.String("subfolder", w.owed.list[0].subfolder))
		w.owed.list = w.owed.list[1:]
	}
	w.owed.list = append(w.owed.list, owed{subfolder: subfolder, names: names})
}

// emptyOwed empties the inputs that could not be emptied while ComfyUI was
// away; the loop calls it before it takes a job.
func (w *Worker) emptyOwed(ctx context.Context) {
	w.owed.mu.Lock()
	list := w.owed.list
	w.owed.list = nil
	w.owed.mu.Unlock()
	if len(list) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, removeTimeout)
	defer cancel()
	for i, o := range list {
		if left := w.emptyInputs(ctx, o.subfolder, o.names); len(left) > 0 {
			// Still away: keep this one and the rest for the next time.
			w.owed.mu.Lock()
			w.owed.list = append(append([]owed{{subfolder: o.subfolder, names: left}}, list[i+1:]...), w.owed.list...)
			w.owed.mu.Unlock()
			return
		}
	}
}
