package blob

import (
	"context"
	"errors"
	"io"
	"time"
)

// The errors every Store translates its backend's errors into.
var (
	// ErrNotFound is returned for a key that does not exist (or expired).
	ErrNotFound = errors.New("blob not found")
	// ErrNoBucket means the bucket (or object store) does not exist.
	ErrNoBucket = errors.New("blob bucket not found")
	// ErrDenied means the store refused the credentials or the operation.
	ErrDenied = errors.New("blob access denied")
)

// Info describes a stored blob.
type Info struct {
	Key  string
	Size int64
	Mime string
}

// Store holds blobs by key.
type Store interface {
	// Put stores r under key, replacing what was there.
	Put(ctx context.Context, key, mime string, r io.Reader) (Info, error)
	// Get opens the blob; the caller closes it. ErrNotFound when missing.
	Get(ctx context.Context, key string) (io.ReadCloser, Info, error)
	// Delete removes the blob; a missing blob is not an error.
	Delete(ctx context.Context, key string) error
}

// OutputKey is where a job attempt's output file is stored. Keying by
// attempt means a redelivered job never overwrites another attempt's file.
func OutputKey(jobID string, attempt int, node, filename string) string {
	return "out/" + jobID + "/" + itoa(attempt) + "/" + node + "/" + filename
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b [20]byte
	n := len(b)
	neg := i < 0
	if neg {
		i = -i
	}
	for i > 0 {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
	}
	if neg {
		n--
		b[n] = '-'
	}
	return string(b[n:])
}

// DefaultTTL is how long blobs live in the default store.
const DefaultTTL = 24 * time.Hour
