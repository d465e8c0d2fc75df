package batch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// ErrUnknown: neither a job nor a batch has the id.
var ErrUnknown = errors.New("no job or batch has this id")

// itemRecord is an item of a batch with its record (nil when it has none).
type itemRecord struct {
	rdb.IndexItem
	rec *proto.Record
	err error
}

// readAll reads the records of the items, up to parallel at a time.
func (r *Runner) readAll(ctx context.Context, items []rdb.IndexItem, parallel int) []itemRecord {
	out := make([]itemRecord, len(items))
	sem := make(chan struct{}, max(parallel, 1))
	var wg sync.WaitGroup
	for i := range items {
		out[i].IndexItem = items[i]
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			rec, err := r.d.Core.Get(ctx, items[i].JobID)
			switch {
			case err == nil:
				out[i].rec = rec
			case !errors.Is(err, rdb.ErrNotFound):
				out[i].err = err
			}
		})
	}
	wg.Wait()
	return out
}

// Status writes the state of a job or, when no job has the id, of the
// batch with that id: a summary and the items that did not complete, or
// with asJSON one manifest-shaped line per item (per job).
func (r *Runner) Status(ctx context.Context, id string, w io.Writer, asJSON bool) error {
	rec, err := r.d.Core.Get(ctx, id)
	if err == nil {
		if asJSON {
			return writeJSONLine(w, ResultOf(rec, rec.ID, 0, nil))
		}
		writeRecord(w, rec)
		return nil
	}
	if !errors.Is(err, rdb.ErrNotFound) {
		return fmt.Errorf("status of %s: %w", id, err)
	}
	_, items, err := r.d.DB.BatchMembers(ctx, id)
	if errors.Is(err, rdb.ErrBatchNotFound) {
		return fmt.Errorf("status of %s: %w (or its records expired)", id, ErrUnknown)
	}
	if err != nil {
		return fmt.Errorf("status of %s: %w", id, err)
	}
	all := r.readAll(ctx, items, 16)
	if asJSON {
		for _, it := range all {
			res := Result{Item: it.Name, Index: it.Index, JobID: it.JobID, BatchID: id, Params: it.Params, Files: []File{}}
			switch {
			case it.err != nil:
				res.Error = it.err.Error()
			case it.rec == nil:
				res.Error = "no status record: not submitted yet, still in the intake, or expired"
			default:
				res = ResultOf(it.rec, it.Name, it.Index, it.Params)
			}
			res.Try = max(it.Try, 1)
			if err := writeJSONLine(w, res); err != nil {
				return err
			}
		}
		return nil
	}
	byStatus := map[string]int{}
	var notable []string
	for _, it := range all {
		st := "NOT_FOUND"
		detail := "no status record (not submitted, still in the intake, or expired)"
		switch {
		case it.err != nil:
			st, detail = "UNREADABLE", it.err.Error()
		case it.rec != nil:
			st, detail = string(it.rec.Status), it.rec.Error
			if it.rec.Status == proto.StatusInProgress {
				detail = "on " + it.rec.WorkerID
			}
		}
		byStatus[st]++
		if st != string(proto.StatusCompleted) {
			notable = append(notable, fmt.Sprintf("  %-11s %s  %s  %s", st, it.Name, it.JobID, detail))
		}
	}
	fmt.Fprintf(w, "batch %s: %d item(s): %s\n", id, len(all), countsText(byStatus))
	const maxLines = 50
	for i, l := range notable {
		if i == maxLines {
			fmt.Fprintf(w, "  … and %d more (use --json for every item)\n", len(notable)-maxLines)
			break
		}
		fmt.Fprintln(w, strings.TrimRight(l, " "))
	}
	return nil
}

// countsText reads like "COMPLETED 45, FAILED 2", in status order.
func countsText(m map[string]int) string {
	order := []string{"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED", "IN_PROGRESS", "IN_QUEUE", "NOT_FOUND", "UNREADABLE"}
	var parts []string
	for _, k := range order {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	return strings.Join(parts, ", ")
}

func writeJSONLine(w io.Writer, v any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	_, err = w.Write(append(line, '\n'))
	return err
}

// writeRecord prints one job's record for a person.
func writeRecord(w io.Writer, rec *proto.Record) {
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%-10s %s\n", k, v)
		}
	}
	row("job", rec.ID)
	row("status", string(rec.Status))
	row("batch", rec.BatchID)
	row("pool", rec.Pool+" / "+string(rec.Lane))
	row("source", rec.Source)
	if rec.WorkerID != "" {
		row("worker", fmt.Sprintf("%s (attempt %d, retries %d)", rec.WorkerID, rec.Attempt, rec.Retries))
	}
	if !rec.SubmittedAt.IsZero() {
		row("submitted", rec.SubmittedAt.Local().Format(time.RFC3339Nano))
	}
	if d := rec.DelayTime(); d > 0 {
		row("queued", d.String())
	}
	if d := rec.ExecutionTime(); d > 0 {
		row("ran", d.String())
	}
	row("error", rec.Error)
	row("webhook", rec.Webhook.String())
	res := ResultOf(rec, rec.ID, 0, nil)
	for _, f := range res.Files {
		where := f.Blob
		if f.URL != "" {
			where = f.URL
		}
		name := f.Filename
		if name == "" {
			name = "(text from node " + f.NodeID + ")"
		}
		row("output", fmt.Sprintf("%s %s (%s, %d bytes) %s", f.Kind, name, f.Mime, f.Size, where))
	}
}

// CancelSummary says what a Cancel did.
type CancelSummary struct {
	// Cancelled jobs, of which Ahead had not reached the dispatcher yet
	// (they were recorded as CANCELLED so they never start).
	Cancelled, Ahead int
	// Finished jobs were terminal already and left alone.
	Finished int
	// Errors are items whose cancel failed.
	Errors []error
}

// Cancel cancels a job or, when no job has the id, every unfinished job
// of the batch with that id: each record becomes CANCELLED and a cancel
// goes out on cf.ctl.cancel so that a worker running it stops. Items of the
// batch with no record yet (still in the intake, or never submitted) are
// recorded as CANCELLED first, so they never start.
func (r *Runner) Cancel(ctx context.Context, id string, w io.Writer) (*CancelSummary, error) {
	sum := &CancelSummary{}
	rec, err := r.d.Core.Get(ctx, id)
	if err == nil {
		r.cancelOne(ctx, rec, sum)
		switch {
		case len(sum.Errors) > 0:
			return sum, sum.Errors[0]
		case sum.Finished > 0:
			fmt.Fprintf(w, "job %s had finished already: %s\n", id, rec.Status)
		default:
			fmt.Fprintf(w, "cancelled job %s (it was %s)\n", id, rec.Status)
		}
		return sum, nil
	}
	if !errors.Is(err, rdb.ErrNotFound) {
		return nil, fmt.Errorf("cancel %s: %w", id, err)
	}
	meta, items, err := r.d.DB.BatchMembers(ctx, id)
	if errors.Is(err, rdb.ErrBatchNotFound) {
		return nil, fmt.Errorf("cancel %s: %w (or its records expired)", id, ErrUnknown)
	}
	if err != nil {
		return nil, fmt.Errorf("cancel %s: %w", id, err)
	}
	var mu sync.Mutex
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, it := range items {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			one := &CancelSummary{}
			rec, err := r.d.Core.Get(ctx, it.JobID)
			switch {
			case errors.Is(err, rdb.ErrNotFound):
				// Record it first, so the dispatcher finds it cancelled.
				pool := meta.Pool
				if pool == "" {
					pool = proto.DefaultPool
				}
				lane := meta.Lane
				if lane == "" {
					lane = proto.LaneBatch
				}
				_, created, err := r.d.Core.CancelUnadmitted(ctx, rdb.CreateParams{
					ID: it.JobID, Pool: pool, Lane: lane, Source: proto.SourceBatch, Tenant: meta.Tenant, BatchID: id,
				})
				switch {
				case err == nil:
					one.Cancelled++
					if created {
						one.Ahead++
					}
				case errors.Is(err, rdb.ErrTerminal):
					one.Finished++
				default:
					one.Errors = append(one.Errors, fmt.Errorf("cancel %s: %w", it.JobID, err))
				}
			case err != nil:
				one.Errors = append(one.Errors, fmt.Errorf("cancel %s: %w", it.JobID, err))
			default:
				r.cancelOne(ctx, rec, one)
			}
			mu.Lock()
			sum.Cancelled += one.Cancelled
			sum.Ahead += min(one.Ahead, one.Cancelled)
			sum.Finished += one.Finished
			sum.Errors = append(sum.Errors, one.Errors...)
			mu.Unlock()
		})
	}
	wg.Wait()
	fmt.Fprintf(w, "batch %s: cancelled %d job(s) (%d not yet admitted); %d had finished already\n",
		id, sum.Cancelled, sum.Ahead, sum.Finished)
	for i, e := range sum.Errors {
		if i == 10 {
			fmt.Fprintf(w, "  … and %d more errors\n", len(sum.Errors)-10)
			break
		}
		fmt.Fprintf(w, "  %v\n", e)
	}
	if len(sum.Errors) > 0 {
		return sum, fmt.Errorf("cancel batch %s: %d job(s) could not be cancelled", id, len(sum.Errors))
	}
	return sum, nil
}

// cancelOne cancels a job whose record was read.
func (r *Runner) cancelOne(ctx context.Context, rec *proto.Record, sum *CancelSummary) {
	if rec.Status.Terminal() {
		sum.Finished++
		return
	}
	_, err := r.d.Core.Cancel(ctx, rec.ID)
	switch {
	case errors.Is(err, rdb.ErrTerminal):
		sum.Finished++
	case err != nil:
		sum.Errors = append(sum.Errors, fmt.Errorf("cancel %s: %w", rec.ID, err))
	default:
		sum.Cancelled++
	}
}
