package batch

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/proto"
)

// FleetView is what `comfyfleet fleet` shows: the live workers, the depth
// of every pool's lanes, the intake and the job totals.
type FleetView struct {
	Workers []fleet.Worker `json:"workers"`
	Lanes   []LaneDepth    `json:"lanes"`
	// Intake is the number of submissions no dispatcher has read yet.
	Intake uint64 `json:"intake"`
	// Totals counts the jobs that reached each terminal status, and
	// RETRIED, since the counters began.
	Totals map[proto.Status]int64 `json:"totals"`
}

// LaneDepth is one lane of one pool.
type LaneDepth struct {
	Pool string     `json:"pool"`
	Lane proto.Lane `json:"lane"`
	// Queued jobs wait for a worker; Running jobs are held by one.
	Queued  uint64 `json:"queued"`
	Running uint64 `json:"running"`
}

// FleetSources are what a FleetView is read from.
type FleetSources struct {
	Workers *fleet.Registry
	// JetStream reads the streams' depths. (This is the one place outside
	// internal/queue that reads JetStream directly: queue.Client.Depth
	// gives totals only, and per-lane depths are needed here.)
	JetStream jetstream.JetStream
	Counts    func(ctx context.Context) (map[proto.Status]int64, error)
}

// ReadFleet reads the fleet's state.
func ReadFleet(ctx context.Context, src FleetSources) (*FleetView, error) {
	v := &FleetView{}
	var err error
	if v.Workers, err = src.Workers.List(ctx); err != nil {
		return nil, err
	}
	if v.Totals, err = src.Counts(ctx); err != nil {
		return nil, err
	}
	intake, err := src.JetStream.Stream(ctx, proto.SubmitStream)
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", proto.SubmitStream, err)
	}
	ii, err := intake.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", proto.SubmitStream, err)
	}
	v.Intake = ii.State.Msgs

	jobs, err := src.JetStream.Stream(ctx, proto.JobsStream)
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", proto.JobsStream, err)
	}
	ji, err := jobs.Info(ctx, jetstream.WithSubjectFilter(proto.JobSubjects))
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", proto.JobsStream, err)
	}
	held := map[string]uint64{} // subject -> messages delivered, not acked
	lister := jobs.ListConsumers(ctx)
	for ci := range lister.Info() {
		held[ci.Config.FilterSubject] += uint64(ci.NumAckPending)
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("read consumers of %s: %w", proto.JobsStream, err)
	}
	pools := map[string]bool{}
	for _, w := range v.Workers {
		if w.Pool != "" {
			pools[w.Pool] = true
		}
	}
	for subj := range ji.State.Subjects {
		if p, _, ok := poolLane(subj); ok {
			pools[p] = true
		}
	}
	for subj := range held {
		if p, _, ok := poolLane(subj); ok {
			pools[p] = true
		}
	}
	for _, p := range sortedKeys(pools) {
		for _, lane := range []proto.Lane{proto.LaneInteractive, proto.LaneBatch} {
			subj := proto.JobSubject(p, lane)
			total, running := ji.State.Subjects[subj], held[subj]
			running = min(running, total)
			v.Lanes = append(v.Lanes, LaneDepth{Pool: p, Lane: lane, Queued: total - running, Running: running})
		}
	}
	return v, nil
}

// poolLane splits "cf.jobs.<pool>.<lane>".
func poolLane(subject string) (string, proto.Lane, bool) {
	parts := strings.Split(subject, ".")
	if len(parts) != 4 || proto.JobSubject(parts[2], proto.Lane(parts[3])) != subject {
		return "", "", false
	}
	return parts[2], proto.Lane(parts[3]), true
}

// Write prints the view for a person.
func (v *FleetView) Write(w io.Writer, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "workers: %d\n", len(v.Workers))
	if len(v.Workers) > 0 {
		fmt.Fprintln(tw, "  ID\tPOOL\tSTATE\tJOB\tDEVICE\tVRAM FREE/TOTAL\tSEEN")
		for _, wk := range v.Workers {
			vram := "-"
			if wk.VRAMTotal > 0 {
				vram = fmt.Sprintf("%d/%d MiB", wk.VRAMFree>>20, wk.VRAMTotal>>20)
			}
			job, dev := wk.JobID, wk.Device
			if job == "" {
				job = "-"
			}
			if dev == "" {
				dev = "-"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s ago\n", wk.ID, wk.Pool, wk.State, job, dev, vram,
				now.Sub(wk.UpdatedAt).Round(time.Second))
		}
	}
	fmt.Fprintln(tw, "lanes:")
	fmt.Fprintln(tw, "  POOL\tLANE\tQUEUED\tRUNNING")
	for _, l := range v.Lanes {
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\n", l.Pool, l.Lane, l.Queued, l.Running)
	}
	fmt.Fprintf(tw, "intake: %d submission(s) waiting for a dispatcher\n", v.Intake)
	var parts []string
	for _, s := range []proto.Status{proto.StatusCompleted, proto.StatusFailed, proto.StatusTimedOut, proto.StatusCancelled} {
		parts = append(parts, fmt.Sprintf("%s %d", s, v.Totals[s]))
	}
	if n := v.Totals[status.CountRetried]; n > 0 {
		parts = append(parts, fmt.Sprintf("%s %d", status.CountRetried, n))
	}
	fmt.Fprintf(tw, "jobs so far: %s\n", strings.Join(parts, ", "))
	tw.Flush()
}
