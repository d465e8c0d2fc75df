package batch

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/comfyfleet/comfyfleet/proto"
)

// MaxBatchIDLen bounds batch ids so that job ids made from them stay
// within proto's 128 characters.
const MaxBatchIDLen = 64

// ValidBatchID reports why id cannot name a batch, or nil.
func ValidBatchID(id string) error {
	if err := proto.ValidID(id); err != nil {
		return fmt.Errorf("batch id: %w", err)
	}
	if len(id) > MaxBatchIDLen {
		return fmt.Errorf("batch id %q is %d characters long, the limit is %d", id, len(id), MaxBatchIDLen)
	}
	return nil
}

// DefaultBatchID derives a batch id from the input's absolute path alone,
// so that every run on the same file or folder is the same batch, with the
// same output folder, whatever its --set specs: a sweep that grows only
// adds items to it (an item's name and job id come from its content; see
// [Expand] and [JobID]). It reads like "<input name>-<8 hex digits>".
func DefaultBatchID(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = path
	}
	h := sha256.Sum256([]byte(abs))
	base := strings.TrimSuffix(filepath.Base(abs), filepath.Ext(abs))
	base = strings.ReplaceAll(SafeName(base), ".", "_")
	if len(base) > 24 {
		base = base[:24]
	}
	return base + "-" + hex.EncodeToString(h[:])[:8]
}

// JobID is the id of an item's (first) job: the batch id, the item's name
// and a hash of the batch, the name and the input. The same item of the
// same batch always gets the same id, which is what makes a second run
// resume the first; an item whose input changed gets a new id, and so a
// new job. A retry of the item runs as AttemptID(JobID(…), try).
func JobID(batchID string, it Item) string {
	h := sha256.New()
	h.Write([]byte(batchID))
	h.Write([]byte{0})
	h.Write([]byte(it.Name))
	h.Write([]byte{0})
	h.Write(it.Input)
	name := strings.ReplaceAll(it.Name, ".", "_")
	if len(name) > 40 {
		name = name[:40]
	}
	return batchID + "-" + name + "-" + hex.EncodeToString(h.Sum(nil))[:10]
}

// AttemptID is the job id of an item's try: the first (try 1) is the
// item's JobID, a later one that id with -r<try>, e.g. …-3b9f6c0e1d-r2.
// A JobID ends in hex digits, so no first try's id looks like a retry's.
func AttemptID(jobID string, try int) string {
	if try <= 1 {
		return jobID
	}
	return jobID + "-r" + strconv.Itoa(try)
}

// tryOf gives the try of id among the tries of the item whose first job is
// jobID; ok is false when id is none of them.
func tryOf(jobID, id string) (try int, ok bool) {
	if id == jobID {
		return 1, true
	}
	rest, found := strings.CutPrefix(id, jobID+"-r")
	if !found {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n < 2 || strconv.Itoa(n) != rest {
		return 0, false
	}
	return n, true
}
