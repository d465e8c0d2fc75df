package redisserver

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The orphan test runs this binary again as the parent of a
	// redis-server; see TestKilledParentLeavesNoOrphan.
	if dir := os.Getenv(parentEnv); dir != "" {
		os.Exit(runParent(dir))
	}
	goleak.VerifyTestMain(m)
}
