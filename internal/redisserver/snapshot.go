package redisserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
)

// snapshotName is the miniredis backend's snapshot file in Dir.
const snapshotName = "miniredis.json"

const (
	snapshotFormat  = "comfyfleet-miniredis-snapshot"
	snapshotVersion = 1
	// databases is how many databases a snapshot covers, as many as a
	// redis-server has by default.
	databases = 16
)

// snapshot is the content of the miniredis backend's snapshot file: every
// key of databases 0 to 15 with its value and absolute expiry.
type snapshot struct {
	Format  string  `json:"format"`
	Version int     `json:"version"`
	Keys    []entry `json:"keys"`
}

// entry is one key. Keys and values are []byte, which JSON holds as base64,
// because Redis strings are bytes and a JSON string is not.
type entry struct {
	DB   int    `json:"db"`
	Key  []byte `json:"key"`
	Type string `json:"type"`
	// ExpireAt is when the key expires, in Unix milliseconds; 0 means
	// never.
	ExpireAt int64 `json:"expire_at_ms,omitempty"`
	// Values is the value: a string's one value; a hash's fields and
	// values, alternating; a list's elements in order; a set's members; a
	// sorted set's members.
	Values [][]byte `json:"values"`
	// Scores are a sorted set's scores, one per member, as Redis writes
	// them: strings, because JSON numbers have no infinities, and Redis's
	// shortest round-trip form loses no bit.
	Scores []string `json:"scores,omitempty"`
}

// The key types a snapshot keeps, as TYPE names them.
const (
	typeString = "string"
	typeHash   = "hash"
	typeList   = "list"
	typeSet    = "set"
	typeZSet   = "zset"
)

func (s *snapshot) encode() ([]byte, error) {
	s.Format, s.Version = snapshotFormat, snapshotVersion
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// decodeSnapshot parses and checks a snapshot file's content.
func decodeSnapshot(data []byte) (*snapshot, error) {
	var s snapshot
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, err
	}
	if s.Format != snapshotFormat {
		return nil, fmt.Errorf("format %q is not %q", s.Format, snapshotFormat)
	}
	if s.Version != snapshotVersion {
		return nil, fmt.Errorf("version %d is not %d", s.Version, snapshotVersion)
	}
	type dbKey struct {
		db  int
		key string
	}
	seen := make(map[dbKey]bool, len(s.Keys))
	for i, e := range s.Keys {
		if err := e.check(); err != nil {
			return nil, fmt.Errorf("key %d (db %d, %q): %w", i, e.DB, e.Key, err)
		}
		k := dbKey{e.DB, string(e.Key)}
		if seen[k] {
			return nil, fmt.Errorf("key %d (db %d, %q): appears twice", i, e.DB, e.Key)
		}
		seen[k] = true
	}
	return &s, nil
}

func (e entry) check() error {
	if e.DB < 0 || e.DB >= databases {
		return fmt.Errorf("db %d is not 0 to %d", e.DB, databases-1)
	}
	if e.ExpireAt < 0 {
		return fmt.Errorf("expire_at_ms %d is negative", e.ExpireAt)
	}
	if len(e.Scores) > 0 && e.Type != typeZSet {
		return fmt.Errorf("a %s has scores", e.Type)
	}
	n := len(e.Values)
	switch e.Type {
	case typeString:
		if n != 1 {
			return fmt.Errorf("a string has %d values", n)
		}
		return nil
	case typeHash:
		if n == 0 || n%2 != 0 {
			return fmt.Errorf("a hash has %d fields and values", n)
		}
		return nil
	case typeList, typeSet:
		if n == 0 {
			return fmt.Errorf("a %s is empty", e.Type)
		}
		return nil
	case typeZSet:
		if n == 0 || len(e.Scores) != n {
			return fmt.Errorf("a zset has %d members and %d scores", n, len(e.Scores))
		}
		_, err := e.scores()
		return err
	}
	return fmt.Errorf("type %q is not one a snapshot keeps", e.Type)
}

// scores parses a sorted set's scores.
func (e entry) scores() ([]float64, error) {
	out := make([]float64, len(e.Scores))
	for i, s := range e.Scores {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsNaN(f) {
			return nil, fmt.Errorf("score %q of member %d is not a number", s, i)
		}
		out[i] = f
	}
	return out, nil
}

// readSnapshot reads and checks the snapshot at path; a missing file is no
// snapshot and no error. It also returns the file's bytes.
func readSnapshot(path string) (*snapshot, []byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read snapshot: %w", err)
	}
	s, err := decodeSnapshot(data)
	if err != nil {
		return nil, nil, fmt.Errorf("snapshot %s is corrupt (move it away to start empty): %w", path, err)
	}
	return s, data, nil
}

// writeFileAtomic replaces path with data: it writes a temporary file in the
// same folder, fsyncs it, renames it over path, and fsyncs the folder, so
// path holds either the old content or the new, never a part.
func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
