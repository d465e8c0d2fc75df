package dispatch

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// ModelCheckConfig configures the admission check of a job's models.
type ModelCheckConfig struct {
	// Off admits every job whatever its models.
	Off bool
	// CacheFor is how long one read of the fleet serves the check; 0
	// means 1 s.
	CacheFor time.Duration
}

// WorkerLister lists the live workers (rdb.DB.Workers).
type WorkerLister interface {
	Workers(ctx context.Context) ([]proto.Heartbeat, error)
}

var _ WorkerLister = (*rdb.DB)(nil)

// ModelCheck fails at admission a job whose models no live worker of its
// pool has, instead of letting it burn GPU time to fail in ComfyUI's
// validation. It judges only from workers that report their models: with
// none (no worker up yet, or all still starting) it admits, and the job
// waits for one. It judges models named by file only: one named by URL
// (in a loader input or input.models) is fetched by the worker that runs
// the job, so no worker lists it beforehand (fleet.WorkflowModels leaves
// it out). Which worker runs the job is the workers' choice
// (internal/worker's routing.go); the dispatcher publishes on the pool's
// lane.
type ModelCheck struct {
	cfg ModelCheckConfig
	reg WorkerLister

	mu      sync.Mutex
	at      time.Time
	workers []proto.Heartbeat
}

var _ ModelChecker = (*ModelCheck)(nil)

// NewModelCheck builds the check. (A redelivered submission whose job
// already left the queue is never checked again: the lifecycle core runs
// the checks of new jobs only.)
func NewModelCheck(cfg ModelCheckConfig, reg WorkerLister) *ModelCheck {
	if cfg.CacheFor == 0 {
		cfg.CacheFor = time.Second
	}
	return &ModelCheck{cfg: cfg, reg: reg}
}

func (m *ModelCheck) list(ctx context.Context) ([]proto.Heartbeat, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.workers != nil && time.Since(m.at) < m.cfg.CacheFor {
		return m.workers, nil
	}
	ws, err := m.reg.Workers(ctx)
	if err != nil {
		return nil, err
	}
	m.workers, m.at = ws, time.Now()
	return ws, nil
}

// Check returns why no worker of the job's pool can run it, or "".
func (m *ModelCheck) Check(ctx context.Context, job *proto.Job, input *proto.Input) (string, error) {
	need := fleet.WorkflowModels(input.Workflow)
	if len(need) == 0 {
		return "", nil
	}
	all, err := m.list(ctx)
	if err != nil {
		return "", fmt.Errorf("check models: %w", err)
	}
	var reporting []proto.Heartbeat
	for _, w := range all {
		if w.Pool == job.Pool && w.Models != nil {
			if fleet.Has(w, need) {
				return "", nil
			}
			reporting = append(reporting, w)
		}
	}
	if len(reporting) == 0 {
		return "", nil
	}
	return missingModels(job.Pool, need, reporting), nil
}

// missingModels says which models no worker has and what the pool offers,
// in the spirit of worker-comfyui's "Available checkpoint models: a, b".
func missingModels(pool string, need map[string][]string, workers []proto.Heartbeat) string {
	have := map[string][]string{}
	for _, w := range workers {
		for input, files := range w.Models {
			for _, f := range files {
				if !slices.Contains(have[input], f) {
					have[input] = append(have[input], f)
				}
			}
		}
	}
	inputs := make([]string, 0, len(need))
	for input := range need {
		inputs = append(inputs, input)
	}
	sort.Strings(inputs)
	var missing []string
	for _, input := range inputs {
		for _, f := range need[input] {
			if !slices.Contains(have[input], f) {
				missing = append(missing, fmt.Sprintf("%s %q", input, f))
			}
		}
	}
	var b strings.Builder
	if len(missing) > 0 {
		fmt.Fprintf(&b, "Workflow validation failed: no worker of pool %q has %s.", pool, strings.Join(missing, ", "))
	} else {
		fmt.Fprintf(&b, "Workflow validation failed: no single worker of pool %q has all of the workflow's models.", pool)
	}
	b.WriteString("\n\nThis usually means a required model or parameter is not available.")
	for _, input := range inputs {
		files := have[input]
		sort.Strings(files)
		label := input
		if input == "ckpt_name" {
			label = "checkpoint"
		}
		if len(files) == 0 {
			fmt.Fprintf(&b, "\nNo %s models appear to be available.", label)
			continue
		}
		fmt.Fprintf(&b, "\nAvailable %s models: %s", label, strings.Join(files, ", "))
	}
	return b.String()
}
