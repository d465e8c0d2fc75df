package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/batch"
	"github.com/comfyfleet/comfyfleet/internal/devstack"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/logging"
	"github.com/comfyfleet/comfyfleet/internal/role"
	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Exit codes of the batch commands.
const (
	exitOK          = 0
	exitNotAllDone  = 1 // an error, or an item that did not complete
	exitUsage       = 2
	exitInterrupted = 130
)

// connConfig are the settings every command but dev shares.
type connConfig struct {
	NATSURL, RedisURL, Dir, LogLevel string
	// Security are the NATS credentials and TLS files of a deployment
	// (not used for a running comfyfleet dev's servers).
	Security role.Security
}

const defaultDir = ".comfyfleet"

// bindConn binds the connection settings.
func bindConn(fs *flagenv.Set, c *connConfig) {
	fs.String(&c.NATSURL, "nats-url", "NATS_URL", "", "NATS server of the fleet (unset with REDIS_URL unset: the running comfyfleet dev's, else nats://127.0.0.1:4222)")
	fs.String(&c.RedisURL, "redis-url", "REDIS_URL", "", "Redis server of the fleet (unset with NATS_URL unset: the running comfyfleet dev's, else redis://127.0.0.1:6379/0)")
	c.Security.Bind(fs)
	fs.String(&c.Dir, "dir", "COMFYFLEET_DIR", defaultDir, "folder of a running comfyfleet dev, whose stack.json names its NATS and Redis; searched in the working directory and its parents unless given")
	fs.String(&c.LogLevel, "log-level", "LOG_LEVEL", "warn", "debug, info, warn or error (logs go to stderr)")
}

// downloadConfig are the settings of the commands that download outputs.
type downloadConfig struct {
	Allow     []string
	AllowHTTP bool
}

// bindDownload binds the download settings.
func bindDownload(fs *flagenv.Set, c *downloadConfig) {
	fs.List(&c.Allow, "download-allow", "DOWNLOAD_URL_ALLOW", nil, "hosts, IPs and CIDR prefixes with their port (host:port, host:* for any; without a port only 80/443) that s3_url downloads may reach although private, loopback or link-local; a running comfyfleet dev's own S3 is allowed without it")
	fs.Bool(&c.AllowHTTP, "download-allow-http", "DOWNLOAD_URL_ALLOW_HTTP", false, "also download http:// s3_url outputs (only https:// otherwise, but for a running comfyfleet dev's own S3)")
}

// submitConfig are the settings of `comfyfleet submit`.
type submitConfig struct {
	Conn       connConfig
	Download   downloadConfig
	Batch      string
	Sets       []string
	Out        string
	NoDownload bool
	Tenant     string
	Pool       string
	Lane       string
	Webhook    string
	Timeout    time.Duration
	TTL        time.Duration
	Retention  time.Duration
	S3Prefix   string
	Parallel   int
	Detach     bool
	// RetryFailed and RetryCancelled resubmit the items whose latest job
	// failed (or timed out) or was cancelled.
	RetryFailed    bool
	RetryCancelled bool
}

// submitSettings binds the settings of `comfyfleet submit`.
func submitSettings(c *submitConfig) *flagenv.Set {
	fs := flagenv.New("comfyfleet submit", "comfyfleet submit INPUT [settings] sends a batch of jobs to the fleet and follows it,\n"+
		"downloading results to --out as they finish. INPUT is a folder of API-format workflows\n"+
		"(*.json), a .jsonl file with one RunPod input per line, or one workflow; --set sweeps\n"+
		"expand it into one job per combination of values:\n\n"+
		"  comfyfleet submit wf.json --set 3.inputs.seed=1..100 --set 6.inputs.text=@prompts.txt\n\n"+
		"Values: A..B (integers), @FILE (one per line), [JSON array], or one literal value.\n"+
		"Running the same command again resumes the batch: finished items are skipped, running\n"+
		"ones followed, missing ones submitted; items are named by their content, so a grown sweep\n"+
		"submits only its new items. --retry-failed (--retry-cancelled) gives the items that failed\n"+
		"(were cancelled) a new job. Ctrl-C stops following; the jobs keep running\n"+
		"(comfyfleet watch BATCH reattaches). Outputs given as URLs (s3_url) are downloaded through\n"+
		"the SSRF guard: https only, no private or loopback address but a running comfyfleet dev's\n"+
		"own S3, unless --download-allow says so.")
	bindConn(fs, &c.Conn)
	fs.String(&c.Batch, "batch", "", "", "batch id (default: derived from INPUT's path, so every run on INPUT is the same batch and a grown sweep only adds its new items)")
	fs.Repeated(&c.Sets, "set", "", "sweep NODE.inputs.NAME=VALUES (repeatable; the batch is the cartesian product)")
	fs.String(&c.Out, "out", "", "", "folder for the results (<out>/<item>/<file>) and results.jsonl (default: ./<batch id>)")
	fs.Bool(&c.NoDownload, "no-download", "", false, "leave outputs in the blob store or S3; results.jsonl still lists them")
	fs.String(&c.Tenant, "tenant", "", "", "tenant that owns the jobs: they go to cf.submit.batch.<tenant>, and that tenant's API keys see them (default: the default tenant)")
	bindDownload(fs, &c.Download)
	fs.String(&c.Pool, "pool", "", "", "pool of workers to run on (default: the dispatcher's default pool)")
	fs.String(&c.Lane, "lane", "", string(proto.LaneBatch), "lane: batch (behind interactive traffic) or interactive")
	fs.String(&c.Webhook, "webhook", "", "", "URL that gets each job's RunPod status body when it finishes")
	fs.Duration(&c.Timeout, "timeout", "", 0, "longest run of one job once started (RunPod's policy.executionTimeout; 0 = the fleet's default)")
	fs.Duration(&c.TTL, "ttl", "", 0, "longest life of one job from submission (RunPod's policy.ttl; 0 = the fleet's default, 24h)")
	fs.Duration(&c.Retention, "retention", "", batch.DefaultRetention, "how long finished jobs' records (and so resume) are kept")
	fs.String(&c.S3Prefix, "s3-prefix", "", "", "S3 key prefix for the outputs of these jobs (output.s3_prefix), when workers upload to S3")
	fs.Int(&c.Parallel, "parallel", "", 8, "status reads, submissions and downloads in flight")
	fs.Bool(&c.Detach, "detach", "", false, "return once every item is submitted, without following the batch")
	fs.Bool(&c.RetryFailed, "retry-failed", "", false, "submit a new job (id ending in -r2, -r3, …) for every item whose latest job failed or timed out; results.jsonl keeps every try")
	fs.Bool(&c.RetryCancelled, "retry-cancelled", "", false, "submit a new job for every item whose latest job was cancelled")
	return fs
}

// watchConfig are the settings of `comfyfleet watch`.
type watchConfig struct {
	Conn       connConfig
	Download   downloadConfig
	Out        string
	NoDownload bool
	Parallel   int
}

// watchSettings binds the settings of `comfyfleet watch`.
func watchSettings(c *watchConfig) *flagenv.Set {
	fs := flagenv.New("comfyfleet watch", "comfyfleet watch BATCH [settings] follows a batch submitted before (by comfyfleet submit\n"+
		"or any producer that set batch_id) until every item finished, downloading results to --out\n"+
		"(s3_url outputs through the SSRF guard, as for submit).")
	bindConn(fs, &c.Conn)
	fs.String(&c.Out, "out", "", "", "folder for the results and results.jsonl (default: ./<batch id>)")
	fs.Bool(&c.NoDownload, "no-download", "", false, "leave outputs in the blob store or S3; results.jsonl still lists them")
	bindDownload(fs, &c.Download)
	fs.Int(&c.Parallel, "parallel", "", 8, "status reads and downloads in flight")
	return fs
}

// showConfig are the settings of `comfyfleet status` and `fleet`.
type showConfig struct {
	Conn connConfig
	JSON bool
}

// statusSettings binds the settings of `comfyfleet status`.
func statusSettings(c *showConfig) *flagenv.Set {
	fs := flagenv.New("comfyfleet status", "comfyfleet status ID|BATCH shows a job's status record or, for a batch, how many items\n"+
		"are in each state and which did not complete.")
	bindConn(fs, &c.Conn)
	fs.Bool(&c.JSON, "json", "", false, "print JSON lines (results.jsonl's shape) instead of text")
	return fs
}

// cancelSettings binds the settings of `comfyfleet cancel`.
func cancelSettings(c *connConfig) *flagenv.Set {
	fs := flagenv.New("comfyfleet cancel", "comfyfleet cancel ID|BATCH cancels a job, or every unfinished job of a batch: queued jobs\n"+
		"never start, running ones are stopped by their worker.")
	bindConn(fs, c)
	return fs
}

// fleetSettings binds the settings of `comfyfleet fleet`.
func fleetSettings(c *showConfig) *flagenv.Set {
	fs := flagenv.New("comfyfleet fleet", "comfyfleet fleet shows the live workers, each pool's lanes with their queued and\n"+
		"running jobs, the intake and the job totals.")
	bindConn(fs, &c.Conn)
	fs.Bool(&c.JSON, "json", "", false, "print JSON instead of text")
	return fs
}

// parse reads args, flags and positional arguments in any order, and
// checks the number of positional arguments (any number when nargs is
// negative). ok false means the command is over with code.
func parse(name string, fs *flagenv.Set, args []string, nargs int, stdout, stderr io.Writer) (pos []string, code int, ok bool) {
	fs.SetOutput(stdout, stderr)
	for {
		if err := fs.Parse(args, nil); err != nil {
			if errors.Is(err, flagenv.ErrHelp) {
				return nil, exitOK, false
			}
			fmt.Fprintf(stderr, "%s: %v\n", name, err)
			return nil, exitUsage, false
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if nargs >= 0 && len(pos) != nargs {
		what := "no argument"
		if nargs == 1 {
			what = "one argument"
		}
		fmt.Fprintf(stderr, "%s: want %s, got %d (see --help)\n", name, what, len(pos))
		return nil, exitUsage, false
	}
	return pos, 0, true
}

// session is an open connection to a fleet for one command.
type session struct {
	b         *backend.Backend
	runner    *batch.Runner
	log       *zap.Logger
	downloads *ssrf.Guard
}

// open finds the fleet and connects to it; dl, for the commands that
// download, says what their downloads may reach.
func open(ctx context.Context, name string, c connConfig, dirGiven bool, dl *downloadConfig, stderr io.Writer) (*session, int, bool) {
	log, err := logging.New(c.LogLevel)
	if err != nil {
		fmt.Fprintf(stderr, "%s: LOG_LEVEL: %v\n", name, err)
		return nil, exitUsage, false
	}
	ep, err := batch.ResolveEndpoints(c.NATSURL, c.RedisURL, c.Dir, dirGiven, devstack.StackFile)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return nil, exitNotAllDone, false
	}
	var sec role.Security
	if ep.From == batch.FromSettings {
		// A deployment's: its credentials and TLS files apply. A running
		// comfyfleet dev's servers take neither.
		if setting, err := c.Security.Finish(ep.NATSURL, ep.RedisURL); err != nil {
			fmt.Fprintf(stderr, "%s: %s: %v\n", name, setting, err)
			return nil, exitUsage, false
		}
		sec = c.Security
	}
	if dl == nil {
		dl = &downloadConfig{}
	}
	guard, err := batch.DownloadGuard(dl.Allow, dl.AllowHTTP, ep)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return nil, exitUsage, false
	}
	octx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	b, err := backend.Open(octx, backend.Config{Name: "comfyfleet-cli", NATSURL: ep.NATSURL, NATSAuth: sec.NATS,
		RedisURL: ep.RedisURL, RedisTLS: sec.RedisTLS, RedisSentinel: sec.RedisSentinel, Attach: true, Logger: log})
	if err != nil {
		guard.Close()
		fmt.Fprintf(stderr, "%s: %v (fleet from %s)\n", name, err, ep.From)
		return nil, exitNotAllDone, false
	}
	r := batch.New(batch.Deps{Queue: b.Queue, Core: b.Core, DB: b.DB, Blobs: b.Blobs, Downloads: guard, Logger: log})
	return &session{b: b, runner: r, log: log, downloads: guard}, 0, true
}

func (s *session) close() {
	s.downloads.Close()
	s.b.Close()
	_ = s.log.Sync()
}

// dirGiven reports whether --dir or COMFYFLEET_DIR named the dev stack's
// folder (else it is searched for).
func dirGiven(c connConfig) bool { return c.Dir != defaultDir }

// isTerminal reports whether w is a terminal (for the progress bar).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func submit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c submitConfig
	fs := submitSettings(&c)
	pos, code, ok := parse("comfyfleet submit", fs, args, 1, stdout, stderr)
	if !ok {
		return code
	}
	var sets []batch.Set
	for _, spec := range c.Sets {
		s, err := batch.ParseSet(spec, os.ReadFile)
		if err != nil {
			fmt.Fprintf(stderr, "comfyfleet submit: %v\n", err)
			return exitUsage
		}
		sets = append(sets, s)
	}
	items, err := batch.Load(pos[0], sets)
	if err != nil {
		fmt.Fprintf(stderr, "comfyfleet submit: %v\n", err)
		return exitUsage
	}
	if c.Batch == "" {
		c.Batch = batch.DefaultBatchID(pos[0])
	}
	if c.Out == "" {
		c.Out = c.Batch
	}
	opts := batch.Options{
		BatchID: c.Batch, Tenant: c.Tenant, Pool: c.Pool, Lane: proto.Lane(c.Lane), Webhook: c.Webhook,
		Policy:    proto.Policy{ExecutionTimeout: c.Timeout.Milliseconds(), TTL: c.TTL.Milliseconds()},
		Retention: c.Retention, S3Prefix: c.S3Prefix, Out: c.Out, NoDownload: c.NoDownload,
		Parallel: c.Parallel, Detach: c.Detach, RetryFailed: c.RetryFailed, RetryCancelled: c.RetryCancelled,
		Output: stdout, Terminal: isTerminal(stdout),
	}
	if err := opts.Validate(); err != nil {
		fmt.Fprintf(stderr, "comfyfleet submit: %v\n", err)
		return exitUsage
	}
	if c.S3Prefix != "" {
		// The same check the dispatcher makes, before anything is sent.
		probe, _ := json.Marshal(proto.Job{ID: "probe", Output: &proto.OutputSettings{S3Prefix: c.S3Prefix}})
		if _, err := proto.DecodeJob(probe); err != nil {
			fmt.Fprintf(stderr, "comfyfleet submit: --s3-prefix: %v\n", err)
			return exitUsage
		}
	}
	s, code, ok := open(ctx, "comfyfleet submit", c.Conn, dirGiven(c.Conn), &c.Download, stderr)
	if !ok {
		return code
	}
	defer s.close()
	sum, err := s.runner.Submit(ctx, items, opts)
	return summaryCode("comfyfleet submit", sum, err, c.Detach, stderr)
}

func watch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c watchConfig
	fs := watchSettings(&c)
	pos, code, ok := parse("comfyfleet watch", fs, args, 1, stdout, stderr)
	if !ok {
		return code
	}
	if c.Out == "" {
		c.Out = pos[0]
	}
	opts := batch.Options{BatchID: pos[0], Out: c.Out, NoDownload: c.NoDownload, Parallel: c.Parallel,
		Output: stdout, Terminal: isTerminal(stdout)}
	if err := opts.Validate(); err != nil {
		fmt.Fprintf(stderr, "comfyfleet watch: %v\n", err)
		return exitUsage
	}
	s, code, ok := open(ctx, "comfyfleet watch", c.Conn, dirGiven(c.Conn), &c.Download, stderr)
	if !ok {
		return code
	}
	defer s.close()
	sum, err := s.runner.Watch(ctx, opts)
	return summaryCode("comfyfleet watch", sum, err, false, stderr)
}

// summaryCode maps the outcome of a submit or watch to an exit code.
func summaryCode(name string, sum *batch.Summary, err error, detach bool, stderr io.Writer) int {
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return exitNotAllDone
	case sum.Interrupted:
		return exitInterrupted
	case detach || sum.OK():
		return exitOK
	}
	return exitNotAllDone
}

func showStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c showConfig
	fs := statusSettings(&c)
	pos, code, ok := parse("comfyfleet status", fs, args, 1, stdout, stderr)
	if !ok {
		return code
	}
	s, code, ok := open(ctx, "comfyfleet status", c.Conn, dirGiven(c.Conn), nil, stderr)
	if !ok {
		return code
	}
	defer s.close()
	if err := s.runner.Status(ctx, pos[0], stdout, c.JSON); err != nil {
		fmt.Fprintf(stderr, "comfyfleet status: %v\n", err)
		return exitNotAllDone
	}
	return exitOK
}

func cancel(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c connConfig
	fs := cancelSettings(&c)
	pos, code, ok := parse("comfyfleet cancel", fs, args, 1, stdout, stderr)
	if !ok {
		return code
	}
	s, code, ok := open(ctx, "comfyfleet cancel", c, dirGiven(c), nil, stderr)
	if !ok {
		return code
	}
	defer s.close()
	if _, err := s.runner.Cancel(ctx, pos[0], stdout); err != nil {
		fmt.Fprintf(stderr, "comfyfleet cancel: %v\n", err)
		return exitNotAllDone
	}
	return exitOK
}

func showFleet(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c showConfig
	fs := fleetSettings(&c)
	if _, code, ok := parse("comfyfleet fleet", fs, args, 0, stdout, stderr); !ok {
		return code
	}
	s, code, ok := open(ctx, "comfyfleet fleet", c.Conn, dirGiven(c.Conn), nil, stderr)
	if !ok {
		return code
	}
	defer s.close()
	v, err := batch.ReadFleet(ctx, s.b.DB, s.b.Queue)
	if err != nil {
		fmt.Fprintf(stderr, "comfyfleet fleet: %v\n", err)
		return exitNotAllDone
	}
	if c.JSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			return exitNotAllDone
		}
		return exitOK
	}
	v.Write(stdout, time.Now())
	return exitOK
}
