package worker_test

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/comfyfleet/comfyfleet/internal/blob/s3/s3test"
)

// gw is the package's S3 server (versitygw), started by the first S3 test.
var gw s3test.Lazy

func TestMain(m *testing.M) {
	code := m.Run()
	gw.Stop()
	if code == 0 {
		err := goleak.Find(
			// nats.go's object store Put can start this goroutine after its
			// cleanup cleared the channel it reads, so it waits on a nil
			// channel forever (nats.go v1.55).
			goleak.IgnoreAnyFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"),
			goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine.func1"),
			goleak.IgnoreTopFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).reaper"),
			goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		)
		if err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
