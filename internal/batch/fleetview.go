package batch

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// FleetView is what `comfyfleet fleet` shows: the same data the
// dispatcher serves as JSON on /fleet (fleet.View).
type FleetView struct{ fleet.View }

// ReadFleet reads the fleet's state.
func ReadFleet(ctx context.Context, db *rdb.DB, q *queue.Client) (*FleetView, error) {
	v, err := fleet.ReadView(ctx, db, q)
	if err != nil {
		return nil, err
	}
	return &FleetView{*v}, nil
}

// Write prints the view for a person.
func (v *FleetView) Write(w io.Writer, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "workers: %d\n", len(v.Workers))
	if len(v.Workers) > 0 {
		fmt.Fprintln(tw, "  ID\tPOOL\tSTATE\tJOB\tPROGRESS\tDEVICE\tVRAM FREE/TOTAL\tCOMFYUI\tWARM\tSEEN")
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
			progress, version, warm := "-", "-", "-"
			if wk.JobID != "" {
				progress = fmt.Sprintf("%.0f%%", wk.Progress*100)
			}
			if wk.ComfyUIVersion != "" {
				version = wk.ComfyUIVersion
			}
			if len(wk.Warm) > 0 {
				warm = strings.Join(wk.Warm, ",")
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s ago\n", wk.ID, wk.Pool, wk.State, job, progress, dev, vram,
				version, warm, now.Sub(wk.UpdatedAt).Round(time.Second))
		}
	}
	fmt.Fprintln(tw, "lanes:")
	fmt.Fprintln(tw, "  POOL\tLANE\tQUEUED\tRUNNING\tOLDEST")
	for _, l := range v.Lanes {
		oldest := "-"
		if !l.Oldest.IsZero() {
			oldest = l.OldestAge(now).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%s\n", l.Pool, l.Lane, l.Queued, l.Running, oldest)
	}
	fmt.Fprintf(tw, "intake: %d submission(s) waiting for a dispatcher\n", v.Intake)
	fmt.Fprintf(tw, "dead letters: %d\n", v.DLQ)
	var parts []string
	for _, s := range []proto.Status{proto.StatusCompleted, proto.StatusFailed, proto.StatusTimedOut, proto.StatusCancelled} {
		parts = append(parts, fmt.Sprintf("%s %d", s, v.Totals[s]))
	}
	if n := v.Totals[rdb.CountRetried]; n > 0 {
		parts = append(parts, fmt.Sprintf("%s %d", rdb.CountRetried, n))
	}
	fmt.Fprintf(tw, "jobs so far: %s\n", strings.Join(parts, ", "))
	tw.Flush()
}
