package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is everything one run measured, and what it ran on. It is the
// JSON the bench writes; two reports compare field by field.
type Report struct {
	// Commit is the source's commit: the binary's VCS stamp, else
	// `git rev-parse HEAD` of the working directory; CommitFrom says
	// which ("build info", "git" or "unknown"). Modified is true when the
	// tree had uncommitted changes.
	Commit     string    `json:"commit"`
	CommitFrom string    `json:"commit_from"`
	Modified   bool      `json:"modified"`
	GoVersion  string    `json:"go_version"`
	OS         string    `json:"os"`
	Arch       string    `json:"arch"`
	GOMAXPROCS int       `json:"gomaxprocs"`
	NumCPU     int       `json:"num_cpu"`
	Started    time.Time `json:"started"`
	Finished   time.Time `json:"finished"`
	// Stack is "in-process" (started by the bench with devstack) or
	// "external" (named by URL).
	Stack    string `json:"stack"`
	Settings Config `json:"settings"`

	Overhead    *OverheadResult    `json:"overhead,omitempty"`
	Throughput  *ThroughputResult  `json:"throughput,omitempty"`
	IdleGap     *IdleGapResult     `json:"idle_gap,omitempty"`
	Interactive *InteractiveResult `json:"interactive,omitempty"`
	Tenants     *TenantsResult     `json:"tenants,omitempty"`
	Mixed       *MixedResult       `json:"mixed_models,omitempty"`
	Memory      *MemoryResult      `json:"memory,omitempty"`

	// Skipped and Errors say, by scenario, why one did not run.
	Skipped map[string]string `json:"skipped,omitempty"`
	Errors  map[string]string `json:"errors,omitempty"`
}

func newReport(cfg Config) *Report {
	r := &Report{
		GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH,
		GOMAXPROCS: runtime.GOMAXPROCS(0), NumCPU: runtime.NumCPU(),
		Started: time.Now().UTC(), Stack: "in-process", Settings: cfg,
		Skipped: map[string]string{}, Errors: map[string]string{},
	}
	if cfg.External() {
		r.Stack = "external"
	}
	r.Commit, r.CommitFrom, r.Modified = commit()
	return r
}

// commit finds the commit of the code that runs.
func commit() (rev, from string, modified bool) {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if rev != "" {
			return rev, "build info", modified
		}
	}
	// `go run` does not stamp the binary: ask git about the working tree.
	out, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		return "", "unknown", false
	}
	status, _ := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output()
	return strings.TrimSpace(string(out)), "git", len(strings.TrimSpace(string(status))) > 0
}

func (r *Report) printHeader(w io.Writer) {
	c := r.Commit
	if c == "" {
		c = "unknown"
	}
	if r.Modified {
		c += " (modified)"
	}
	fmt.Fprintf(w, "comfyfleet bench: commit %s, %s %s/%s, GOMAXPROCS %d, %d CPU(s), %s stack\n",
		c, r.GoVersion, r.OS, r.Arch, r.GOMAXPROCS, r.NumCPU, r.Stack)
}

func (r *Report) write(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// Dist summarises a sample of durations, in milliseconds. Percentiles are
// nearest-rank, so P50 ≤ P90 ≤ P99 ≤ Max always holds.
type Dist struct {
	N    int     `json:"n"`
	Mean float64 `json:"mean_ms"`
	Min  float64 `json:"min_ms"`
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	Max  float64 `json:"max_ms"`
}

// distOf summarises ms; an empty sample gives N 0 and zeros.
func distOf(ms []float64) Dist {
	if len(ms) == 0 {
		return Dist{}
	}
	s := slices.Clone(ms)
	slices.Sort(s)
	var sum float64
	for _, v := range s {
		sum += v
	}
	rank := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[max(i, 0)]
	}
	return Dist{N: len(s), Mean: round3(sum / float64(len(s))), Min: round3(s[0]),
		P50: round3(rank(0.50)), P90: round3(rank(0.90)), P99: round3(rank(0.99)), Max: round3(s[len(s)-1])}
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// round3 keeps three decimals (microseconds of a millisecond figure).
func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// distRow is a table row of a distribution, for a tabwriter that aligns
// left: the numbers have fixed widths so they line up on the right.
func distRow(name string, d Dist) string {
	return fmt.Sprintf("%s\t%6d %8.2f %8.2f %8.2f %8.2f %8.2f", name, d.N, d.P50, d.P90, d.P99, d.Max, d.Mean)
}

var distHeader = fmt.Sprintf("\t%6s %8s %8s %8s %8s %8s", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms")

// newTable is the tabwriter of the tables.
func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }
