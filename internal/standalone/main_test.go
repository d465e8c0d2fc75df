package standalone_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testenv.LeakOptions()...)
}
