package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/proto"
)

// finalWriteTimeout bounds each status write, ack and event at the end of
// a job; they run detached from the job's context so a cancelled job still
// gets its final word in.
const finalWriteTimeout = 10 * time.Second

// outcome is what running a job led to.
type outcome struct {
	status       proto.Status // terminal status, or "" to put the job back
	output       any          // proto.Output or proto.Failure
	errMsg       string
	requeueDelay time.Duration
	reason       string // why it went back on the queue
}

// handle runs one delivery to its end: a terminal status and an ack, or the
// job back on the queue and a NAK.
func (w *Worker) handle(ctx context.Context, msg *queue.Message) {
	job, err := proto.DecodeJob(msg.Data())
	if err != nil {
		// The dispatcher only admits decodable jobs; this is corruption.
		w.log.Error("undecodable job message, terminating it", zap.String("subject", msg.Subject()), zap.Error(err))
		_ = msg.Term()
		return
	}
	log := w.log.With(zap.String("job_id", job.ID))
	final, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalWriteTimeout)
	defer cancel()

	attempt, _, err := w.store.Claim(final, job.ID, w.cfg.ID)
	switch {
	case errors.Is(err, status.ErrTerminal):
		// Cancelled or timed out while queued: it never starts.
		log.Info("job already finished, dropping it")
		_ = msg.Ack(final)
		return
	case errors.Is(err, status.ErrNotFound):
		log.Warn("job has no status record (expired), dropping it")
		_ = msg.Ack(final)
		return
	case err != nil:
		log.Warn("claim job", zap.Error(err))
		_ = msg.Nak(time.Second)
		return
	}
	log = log.With(zap.Int("attempt", attempt))
	w.setState(fleet.StateRunning, job.ID)
	w.event(final, &proto.Event{JobID: job.ID, Type: proto.EventStatus, Status: proto.StatusInProgress, Attempt: attempt, WorkerID: w.cfg.ID})

	stopBeat := w.heartbeat(msg)
	out := w.run(ctx, log, job, attempt)
	stopBeat()

	final, cancel = context.WithTimeout(context.WithoutCancel(ctx), finalWriteTimeout)
	defer cancel()
	if out.status == "" {
		if _, err := w.store.Requeue(final, job.ID, attempt, out.reason); err != nil {
			log.Warn("requeue job", zap.Error(err))
		} else {
			w.event(final, &proto.Event{JobID: job.ID, Type: proto.EventStatus, Status: proto.StatusInQueue, Attempt: attempt, WorkerID: w.cfg.ID, Error: out.reason})
		}
		log.Info("job back on the queue", zap.String("reason", out.reason))
		_ = msg.Nak(out.requeueDelay)
		return
	}
	data, err := json.Marshal(out.output)
	if err != nil {
		data, _ = json.Marshal(proto.Failure{Error: fmt.Sprintf("encode output: %v", err)})
	}
	_, err = w.store.Finish(final, job.ID, attempt, out.status, data, out.errMsg)
	switch {
	case errors.Is(err, status.ErrStale):
		// A newer attempt owns the job (our lease expired and it was
		// redelivered): its delivery will ack the message, not ours.
		log.Warn("status write fenced out by a newer attempt; leaving the message to it")
		return
	case errors.Is(err, status.ErrTerminal):
		log.Info("job was finished elsewhere (cancelled?)", zap.Error(err))
		_ = msg.Ack(final)
		return
	case err != nil:
		// Redis is unreachable: let the message come back and try again.
		log.Warn("write final status", zap.Error(err))
		_ = msg.Nak(time.Second)
		return
	}
	w.event(final, &proto.Event{JobID: job.ID, Type: proto.EventStatus, Status: out.status, Attempt: attempt, WorkerID: w.cfg.ID, Error: out.errMsg})
	if err := msg.Ack(final); err != nil {
		log.Warn("ack job", zap.Error(err))
	}
	log.Debug("job done", zap.String("status", string(out.status)))
}

// run executes the job and classifies the result. A panic is turned into a
// failure with its stack.
func (w *Worker) run(ctx context.Context, log *zap.Logger, job *proto.Job, attempt int) (out outcome) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("panic running job", zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
			out = failed(fmt.Sprintf("An unexpected error occurred: %v", r))
		}
	}()
	output, err := w.execute(ctx, log, job, attempt)
	if err == nil {
		return outcome{status: proto.StatusCompleted, output: output}
	}
	return w.classify(ctx, err)
}

// classify maps an execution error to an outcome.
func (w *Worker) classify(ctx context.Context, err error) outcome {
	var verr *comfy.ValidationError
	var xerr *comfy.ExecutionError
	var ferr *failure
	switch {
	case ctx.Err() != nil:
		// The worker is shutting down: another GPU takes the job at once.
		return outcome{reason: "worker stopped before the job finished"}
	case errors.Is(err, comfy.ErrUnavailable):
		return outcome{reason: fmt.Sprintf("ComfyUI unavailable: %v", err), requeueDelay: time.Second}
	case errors.As(err, &ferr):
		return outcome{status: proto.StatusFailed, output: proto.Failure{Error: ferr.msg, Details: ferr.details}, errMsg: ferr.msg}
	case errors.As(err, &verr):
		return failed(verr.Message())
	case errors.As(err, &xerr):
		const msg = "Job processing failed"
		return outcome{status: proto.StatusFailed, output: proto.Failure{Error: msg, Details: []string{xerr.Detail()}}, errMsg: msg}
	}
	return failed(err.Error())
}

func failed(msg string) outcome {
	return outcome{status: proto.StatusFailed, output: proto.Failure{Error: msg}, errMsg: msg}
}

// failure is a job failure whose message and details are final.
type failure struct {
	msg     string
	details []string
}

func (f *failure) Error() string { return f.msg }

// heartbeat keeps the message's lease alive while the job runs.
func (w *Worker) heartbeat(msg *queue.Message) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(w.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := msg.InProgress(); err != nil {
					w.log.Warn("heartbeat job message", zap.Error(err))
				}
			}
		}
	}()
	return func() { close(done); <-finished }
}

func (w *Worker) event(ctx context.Context, ev *proto.Event) {
	if err := w.q.PublishEvent(ctx, ev); err != nil {
		w.log.Warn("publish event", zap.String("job_id", ev.JobID), zap.Error(err))
	}
}
