package redisserver

import (
	"fmt"
	"io"
	"os"
)

// parentEnv makes the test binary run runParent instead of the tests: it
// names the folder of the redis-server it starts.
const parentEnv = "COMFYFLEET_REDISSERVER_TEST_PARENT"

// runParent starts a redis-server on dir, prints "<pid> <url>", and runs
// until its stdin closes; the orphan test kills it before that.
func runParent(dir string) int {
	srv, err := Start(Config{Dir: dir, Backend: BackendRedisServer})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("%d %s\n", srv.impl.(*process).cmd.Process.Pid, srv.URL())
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := srv.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
