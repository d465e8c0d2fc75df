package dirlock

import (
	"errors"
	"fmt"
	"io"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// helperEnv makes the test binary run helperMain instead of the tests: it
// names the folder the helper process locks.
const helperEnv = "COMFYFLEET_DIRLOCK_TEST_HELPER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		os.Exit(helperMain(dir))
	}
	goleak.VerifyTestMain(m)
}

// helperMain tries to lock dir and prints what happened: "held" (then it
// keeps the lock until its stdin closes), "held-by <pid>", or "error
// <message>".
func helperMain(dir string) int {
	l, err := Acquire(dir)
	var held *HeldError
	switch {
	case errors.As(err, &held):
		fmt.Printf("held-by %d\n", held.PID)
		return 3
	case err != nil:
		fmt.Printf("error %v\n", err)
		return 1
	}
	fmt.Println("held")
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := l.Release(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
