package chaos_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	removeBinaries()
	if code == 0 {
		if err := goleak.Find(testenv.LeakOptions()...); err != nil {
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}
