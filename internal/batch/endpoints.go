package batch

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Endpoints say where a fleet's NATS and Redis are.
type Endpoints struct {
	NATSURL, RedisURL string
	// S3Origins are the scheme://host:port of the dev stack's S3 (its
	// endpoint and public URL), whose s3_url outputs the CLI may download
	// although they are often on loopback ([DownloadGuard]).
	S3Origins []string
	// From says where they came from: "settings" (flags or environment),
	// the path of a dev stack's file, or "defaults".
	From string
}

// FromSettings is Endpoints.From for URLs given by flags or the
// environment: a deployment's, whose credentials and TLS settings apply.
const FromSettings = "settings"

// stackFile is the part of the file `comfyfleet dev` writes that the CLI
// reads (devstack.Info).
type stackFile struct {
	APIURL    string   `json:"api_url"`
	NATSURL   string   `json:"nats_url"`
	RedisURL  string   `json:"redis_url"`
	PID       int      `json:"pid"`
	S3Origins []string `json:"s3_origins"`
}

// ErrStaleStack: the dev stack that wrote the stack file is gone.
var ErrStaleStack = errors.New("the comfyfleet dev that wrote it is not running")

// ErrNoFleet: neither settings nor a running dev stack name a fleet.
var ErrNoFleet = errors.New("no fleet found")

// ResolveEndpoints finds the fleet for a CLI command. NATS and Redis URLs
// given as settings win (an empty one then means the default). With
// neither given, the file a running `comfyfleet dev` leaves behind
// (<dir>/<name>, where name is devstack.StackFile) names them: dir itself
// when dirGiven, else the first <dir> found in the working directory or
// one of its parents. With no such file it fails with ErrNoFleet: the CLI
// never guesses a fleet at the default addresses.
func ResolveEndpoints(natsURL, redisURL, dir string, dirGiven bool, name string) (Endpoints, error) {
	if natsURL != "" || redisURL != "" {
		return Endpoints{NATSURL: natsURL, RedisURL: redisURL, From: FromSettings}, nil
	}
	path := findStackFile(dir, dirGiven, name)
	if path == "" {
		where := "in the working directory or a parent"
		if dirGiven || filepath.IsAbs(dir) {
			where = "in " + dir
		}
		return Endpoints{}, fmt.Errorf("%w: no running comfyfleet dev (no %s %s) and neither NATS_URL nor REDIS_URL is set; start `comfyfleet dev`, or set NATS_URL and REDIS_URL to a deployment's",
			ErrNoFleet, filepath.Join(dir, name), where)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Endpoints{}, fmt.Errorf("read dev stack file: %w", err)
	}
	var sf stackFile
	if err := json.Unmarshal(data, &sf); err != nil {
		return Endpoints{}, fmt.Errorf("read dev stack file %s: %w", path, err)
	}
	if sf.NATSURL == "" || sf.RedisURL == "" {
		return Endpoints{}, fmt.Errorf("read dev stack file %s: it names no NATS or Redis URL", path)
	}
	if sf.PID > 0 && !alive(sf.PID) {
		return Endpoints{}, fmt.Errorf("dev stack file %s: %w (pid %d); start it again, or set NATS_URL and REDIS_URL", path, ErrStaleStack, sf.PID)
	}
	return Endpoints{NATSURL: sf.NATSURL, RedisURL: sf.RedisURL, S3Origins: sf.S3Origins, From: path}, nil
}

func findStackFile(dir string, dirGiven bool, name string) string {
	if dirGiven || filepath.IsAbs(dir) {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
		return ""
	}
	wd, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		p := filepath.Join(wd, dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
		parent := filepath.Dir(wd)
		if parent == wd {
			return ""
		}
		wd = parent
	}
}

// alive reports whether a process with the pid exists.
func alive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	err = p.Signal(syscall.Signal(0))
	return err == nil || errors.Is(err, syscall.EPERM)
}
