package testenv

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// HelperProcess is the test binary run again as another process, for tests
// about what crosses processes (locks, orphans, a killed parent). The
// package's TestMain sees the environment variable the test set and runs
// the helper's code instead of the tests.
type HelperProcess struct {
	Cmd   *exec.Cmd
	Stdin io.WriteCloser // closing it is the helper's cue to finish
	out   *bufio.Reader
}

// StartHelperProcess runs the test binary with env (KEY=value pairs) added
// and no tests selected; cleanup closes its stdin, kills it and reaps it.
func StartHelperProcess(t testing.TB, env ...string) *HelperProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// A -race binary waits a second at exit unless told not to.
	cmd.Env = append(append(os.Environ(), env...), "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("helper process: %v", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("helper process: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("helper process: %v", err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return &HelperProcess{Cmd: cmd, Stdin: stdin, out: bufio.NewReader(stdout)}
}

// ReadLine waits for the next line the helper prints and returns it
// without its line end.
func (h *HelperProcess) ReadLine(t testing.TB) string {
	t.Helper()
	line, err := h.out.ReadString('\n')
	if err != nil {
		t.Fatalf("helper process %d: read a line: %v (got %q)", h.Cmd.Process.Pid, err, line)
	}
	return strings.TrimRight(line, "\r\n")
}
