package bench_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/comfyfleet/comfyfleet/internal/bench"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

func TestMain(m *testing.M) {
	// The memory scenario runs the roles it measures in this binary.
	if ok, code := bench.Child(); ok {
		os.Exit(code)
	}
	goleak.VerifyTestMain(m, testenv.LeakOptions()...)
}
