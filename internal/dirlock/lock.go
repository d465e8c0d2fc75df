package dirlock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// FileName is the lock file in the folder.
const FileName = "lock"

// Lock is a held folder lock.
type Lock struct {
	dir string

	mu   sync.Mutex
	file *os.File // nil once released
}

// HeldError is Acquire's error when another process (or another Lock in
// this one) holds the folder.
type HeldError struct {
	// Dir is the folder, as given to Acquire.
	Dir string
	// PID is the holder's process id, 0 when it has not written it yet.
	PID int
	// Command is the holder's command line, as it wrote it.
	Command string
}

func (e *HeldError) Error() string {
	holder := "another process"
	if e.PID != 0 {
		holder = "process " + strconv.Itoa(e.PID)
		if e.Command != "" {
			holder += " (" + e.Command + ")"
		}
	}
	return fmt.Sprintf("folder %s is in use by %s; stop it or use another --dir", e.Dir, holder)
}

// Acquire creates dir if needed and locks it for this process, or returns a
// *HeldError naming the process that holds it.
func Acquire(dir string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lock folder: %w", err)
	}
	path := filepath.Join(dir, FileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock folder: %w", err)
	}
	// A holder writes its pid just after it takes the lock, and clears it
	// just before it lets go: a held lock with no pid is worth another
	// look, for a little while.
	deadline := time.Now().Add(500 * time.Millisecond)
	for {
		err := flock(f, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock folder: flock %s: %w", path, err)
		}
		h := &HeldError{Dir: dir}
		h.PID, h.Command = readHolder(path)
		if h.PID != 0 || time.Now().After(deadline) {
			f.Close()
			return nil, h
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := writeHolder(f); err != nil {
		f.Close() // drops the lock
		return nil, fmt.Errorf("lock folder: write %s: %w", path, err)
	}
	return &Lock{dir: dir, file: f}, nil
}

// Dir is the locked folder, as given to Acquire.
func (l *Lock) Dir() string { return l.dir }

// Release clears the holder from the lock file and unlocks the folder. It
// is idempotent and safe on a nil Lock.
func (l *Lock) Release() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file == nil {
		return nil
	}
	f := l.file
	l.file = nil
	// Clear first, while still locked, so nobody reads a stale holder.
	err := f.Truncate(0)
	if cerr := f.Close(); err == nil { // closing drops the lock
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("release folder %s: %w", l.dir, err)
	}
	return nil
}

func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// writeHolder replaces the lock file's content with this process's id and
// command line.
func writeHolder(f *os.File) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"+command()+"\n"), 0)
	return err
}

// command is this process's command line, short: the program's base name
// and its arguments.
func command() string {
	if len(os.Args) == 0 {
		return ""
	}
	args := append([]string{filepath.Base(os.Args[0])}, os.Args[1:]...)
	s := strings.Join(args, " ")
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
	const max = 200
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

// readHolder reads the pid and command line from a lock file; pid is 0
// when the file holds none, or only part of what a holder writes.
func readHolder(path string) (pid int, command string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, ""
	}
	pidLine, rest, _ := strings.Cut(string(data), "\n")
	pid, err = strconv.Atoi(pidLine)
	if err != nil || pid <= 0 || !strings.HasSuffix(rest, "\n") {
		return 0, ""
	}
	return pid, strings.TrimSuffix(rest, "\n")
}
