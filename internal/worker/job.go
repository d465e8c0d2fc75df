package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"runtime/debug"
	"time"

	"github.com/nats-io/nats.go"
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

// Why a job's context ended (context.Cause).
var (
	errCancelled = errors.New("job cancelled")
	errTimedOut  = errors.New("execution timeout")
	errStalled   = errors.New("no progress from ComfyUI")
	errComfyDown = errors.New("ComfyUI stopped answering")
)

// DLQReasonHeader carries the last error of a job put on the dead-letter
// stream.
const DLQReasonHeader = "Cf-Dlq-Reason"

// DLQAttemptsHeader carries every failed attempt's error of a dead
// letter, a JSON array of strings, oldest first.
const DLQAttemptsHeader = "Cf-Dlq-Attempts"

// outcome is what running a job led to.
type outcome struct {
	status       proto.Status // terminal status, or "" to put the job back
	output       any          // proto.Output or proto.Failure
	errMsg       string
	requeueDelay time.Duration
	reason       string // why it went back on the queue
	// retryable marks a requeue that counts against MaxAttempts; final is
	// the outcome once they are used up.
	retryable bool
	final     *outcome
	// cancelled: someone else made the status CANCELLED; only ack.
	cancelled bool
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
	if w.deferToWarm(ctx, job, msg) {
		return
	}
	log := w.log.With(zap.String("job_id", job.ID))
	jctx, cancelJob := context.WithCancelCause(ctx)
	defer cancelJob(nil)
	// Tracked before the claim: a cancel that lands after the claim finds
	// the job; one before it made the record terminal, which Claim sees.
	untrack := w.track(&jobRef{id: job.ID, cancel: cancelJob})
	defer untrack()

	held := w.takeLease(msg, job, log)
	defer held.release()
	final, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalWriteTimeout)
	defer cancel()
	if w.live != nil && expired(job, time.Now()) {
		// Past its TTL: it never reaches the GPU (the dispatcher's sweeper
		// may have been slower than this delivery).
		_, err := w.live.Expire(final, job.ID, ttlExpiredMessage)
		switch {
		case err == nil:
			log.Info("job expired in the queue, dropping it")
			w.event(final, &proto.Event{JobID: job.ID, Type: proto.EventStatus, Status: proto.StatusTimedOut, Error: ttlExpiredMessage})
			_ = msg.Ack(final)
			return
		case errors.Is(err, status.ErrTerminal), errors.Is(err, status.ErrNotFound):
			_ = msg.Ack(final)
			return
		case errors.Is(err, status.ErrIllegal):
			// IN_PROGRESS: a redelivery of a job that had started; the
			// TTL only bounds the wait in the queue.
		default:
			log.Warn("expire job", zap.Error(err))
			_ = msg.Nak(time.Second)
			return
		}
	}
	attempt, claimed, err := w.store.Claim(final, job.ID, w.cfg.ID)
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
	w.noteWarm(job)
	w.metrics.claimed(claimed)
	if w.exhausted(final, job, msg, attempt, log) {
		return
	}
	held.claimed(attempt, time.Now().Add(w.timeout(job)))
	w.setState(fleet.StateRunning, job.ID)
	w.event(final, &proto.Event{JobID: job.ID, Type: proto.EventStatus, Status: proto.StatusInProgress, Attempt: attempt, WorkerID: w.cfg.ID})

	ex := newExecution(w, log, job, attempt)
	stopBeat := w.heartbeat(msg, ex)
	began := time.Now()
	out := w.run(jctx, ex)
	stopBeat()
	if w.cfg.RefreshWorker {
		w.refresh(ctx, log)
	}

	final, cancel = context.WithTimeout(context.WithoutCancel(ctx), finalWriteTimeout)
	defer cancel()
	if out.cancelled {
		// The canceller made the record CANCELLED before telling the
		// workers; Cancel again in case it did not, so no job is left
		// IN_PROGRESS. A terminal record is left as it is.
		if _, err := w.store.Cancel(final, job.ID); err != nil && !errors.Is(err, status.ErrTerminal) {
			log.Warn("mark cancelled job", zap.Error(err))
		}
		log.Info("job cancelled; its prompt was stopped in ComfyUI")
		_ = msg.Ack(final)
		return
	}
	deadLetter := false
	if out.status == "" && out.retryable {
		failures := w.failedAttempts(final, job.ID, attempt, out.reason, log)
		if failures >= w.cfg.MaxAttempts && out.final != nil {
			log.Warn("job failed on its last attempt", zap.String("reason", out.reason), zap.Int("max_attempts", w.cfg.MaxAttempts))
			out, deadLetter = *out.final, true
		} else {
			out.requeueDelay = retryDelay(out.requeueDelay, failures)
		}
	}
	w.metrics.ran(out.status, time.Since(began))
	if out.status == "" {
		_, err := w.store.Requeue(final, job.ID, attempt, out.reason)
		switch {
		case errors.Is(err, status.ErrTerminal):
			log.Info("job was finished elsewhere while running (cancelled?)")
			_ = msg.Ack(final)
			return
		case errors.Is(err, status.ErrStale):
			log.Warn("requeue fenced out by a newer attempt; leaving the message to it")
			return
		case err != nil:
			log.Warn("requeue job", zap.Error(err))
		default:
			w.event(final, &proto.Event{JobID: job.ID, Type: proto.EventStatus, Status: proto.StatusInQueue, Attempt: attempt, WorkerID: w.cfg.ID, Error: out.reason})
		}
		log.Info("job back on the queue", zap.String("reason", out.reason), zap.Duration("delay", out.requeueDelay))
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
	if deadLetter {
		w.deadLetter(final, job, msg, out.errMsg, w.attemptErrors(final, job.ID, out.errMsg))
	}
	w.ackFinished(ctx, msg, log)
	log.Debug("job done", zap.String("status", string(out.status)))
}

// run executes the job under its execution timeout and classifies the
// result. A panic is turned into a failure with its stack.
func (w *Worker) run(ctx context.Context, ex *execution) (out outcome) {
	defer func() {
		if r := recover(); r != nil {
			ex.log.Error("panic running job", zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
			out = failed(fmt.Sprintf("An unexpected error occurred: %v", r))
		}
	}()
	timeout := w.timeout(ex.job)
	tctx, cancel := context.WithTimeoutCause(ctx, timeout, errTimedOut)
	defer cancel()
	sctx, stall := context.WithCancelCause(tctx)
	defer stall(nil)
	if w.cfg.StallTimeout > 0 {
		stopWatch := ex.watchStall(sctx, stall)
		defer stopWatch()
	}
	output, err := ex.execute(sctx)
	if err == nil {
		return outcome{status: proto.StatusCompleted, output: output}
	}
	var cause error
	if sctx.Err() != nil {
		cause = context.Cause(sctx)
	}
	if cause != nil && ex.promptID() != "" {
		// The job is being taken away: stop the GPU work too (removed from
		// ComfyUI's queue if pending, interrupted if running).
		limit := 5 * time.Second
		if errors.Is(cause, errComfyDown) {
			limit = time.Second // it is not answering: try once, briefly
		}
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), limit)
		if cerr := w.comfy.Cancel(cctx, ex.promptID()); cerr != nil && !errors.Is(cause, errComfyDown) {
			ex.log.Warn("cancel prompt in comfyui", zap.String("prompt_id", ex.promptID()), zap.Error(cerr))
		}
		ccancel()
	}
	w.metrics.failedWith(err, cause)
	return w.classify(ex, err, cause, timeout)
}

// classify maps an execution error (and why the job's context ended, if
// it did) to an outcome.
func (w *Worker) classify(ex *execution, err, cause error, timeout time.Duration) outcome {
	var (
		verr *comfy.ValidationError
		xerr *comfy.ExecutionError
		ierr *comfy.InterruptedError
		serr *comfy.StatusError
		merr *comfy.MissingPromptIDError
		ferr *failure
	)
	unreachable := w.unreachableMessage(ex)
	switch {
	case errors.Is(cause, errCancelled):
		return outcome{cancelled: true}
	case errors.Is(cause, errTimedOut):
		return timedOut(fmt.Sprintf("Job execution timed out after %v (policy.executionTimeout); the prompt was interrupted in ComfyUI.", timeout))
	case errors.Is(cause, errStalled):
		return timedOut(fmt.Sprintf("Job stalled: no progress from ComfyUI for %v; the prompt was interrupted in ComfyUI.", w.cfg.StallTimeout))
	case errors.Is(cause, errComfyDown):
		return retry("ComfyUI stopped answering", 0, unreachable)
	case cause != nil, errors.Is(err, comfy.ErrClosed):
		// The worker is shutting down: another GPU takes the job at once.
		return outcome{reason: "worker stopped before the job finished"}
	case errors.As(err, &ferr):
		return outcome{status: proto.StatusFailed, output: proto.Failure{Error: ferr.msg, Details: ferr.details}, errMsg: ferr.msg}
	case errors.Is(err, comfy.ErrNoHistoryEntry):
		return failed(fmt.Sprintf("Prompt ID %s not found in history after execution.", ex.promptID()))
	case errors.Is(err, comfy.ErrPromptLost):
		// ComfyUI restarted and lost its queue and history: run it again.
		return retry("ComfyUI lost the prompt (restarted?)", 0, unreachable)
	case errors.Is(err, comfy.ErrUnavailable):
		// Gone for good (another worker should take the job now), or a
		// hiccup (try again in a while)?
		delay := w.cfg.RetryDelay
		if !w.answers() {
			delay = 0
		}
		return retry(fmt.Sprintf("ComfyUI unavailable: %v", err), delay, unreachable)
	case errors.As(err, &verr):
		return failed(verr.Message())
	case errors.As(err, &merr):
		return failed(merr.Error())
	case errors.As(err, &xerr):
		f := jobFailed(xerr.Detail())
		if xerr.IsOOM() {
			return retry("ComfyUI ran out of memory", w.cfg.RetryDelay, f)
		}
		return f
	case errors.As(err, &ierr):
		// Nobody here interrupted it: another client of this ComfyUI did.
		detail := "Workflow execution interrupted"
		if ierr.NodeID != "" {
			detail = fmt.Sprintf("Workflow execution interrupted: Node Type: %s, Node ID: %s", ierr.NodeType, ierr.NodeID)
		}
		return retry("the prompt was interrupted in ComfyUI by someone else", w.cfg.RetryDelay, jobFailed(detail))
	case errors.As(err, &serr) && !ex.accepted() && !errors.Is(err, fs.ErrNotExist):
		return failed("Error queuing workflow: " + serr.Error())
	case errors.As(err, &serr):
		return failed("HTTP communication error with ComfyUI: " + serr.Error())
	}
	return failed("An unexpected error occurred: " + err.Error())
}

// answers probes ComfyUI once, briefly.
func (w *Worker) answers() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := w.comfy.SystemStats(ctx)
	return err == nil
}

// unreachableMessage is worker-comfyui's message for ComfyUI going away,
// used when the attempts are used up: before the prompt was queued it was
// "not reachable", after it the WebSocket could not be re-established.
func (w *Worker) unreachableMessage(ex *execution) outcome {
	if !ex.accepted() {
		host := w.comfyURL
		if u, err := url.Parse(w.comfyURL); err == nil && u.Host != "" {
			host = u.Host
		}
		return failed(fmt.Sprintf("ComfyUI server (%s) not reachable after multiple retries.", host))
	}
	return failed("WebSocket communication error: ComfyUI HTTP unreachable during websocket reconnect")
}

func failed(msg string) outcome {
	return outcome{status: proto.StatusFailed, output: proto.Failure{Error: msg}, errMsg: msg}
}

func timedOut(msg string) outcome {
	return outcome{status: proto.StatusTimedOut, output: proto.Failure{Error: msg}, errMsg: msg}
}

// jobFailed is worker-comfyui's failure with details.
func jobFailed(details ...string) outcome {
	const msg = "Job processing failed"
	return outcome{status: proto.StatusFailed, output: proto.Failure{Error: msg, Details: details}, errMsg: msg}
}

func retry(reason string, delay time.Duration, final outcome) outcome {
	return outcome{reason: reason, requeueDelay: delay, retryable: true, final: &final}
}

// failure is a job failure whose message and details are final.
type failure struct {
	msg     string
	details []string
}

func (f *failure) Error() string { return f.msg }

// heartbeat keeps the message's lease alive while the job progresses: in
// the worker's own phases (inputs, outputs) always, and while the prompt
// runs only as long as ComfyUI answers and has reported progress within the
// stall timeout. A job that stops progressing loses its lease and goes to
// another worker if this one does not end it first.
func (w *Worker) heartbeat(msg *queue.Message, ex *execution) (stop func()) {
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
				if !ex.progressing() {
					ex.log.Debug("no progress; skipping the heartbeat")
					continue
				}
				if err := msg.InProgress(); err != nil {
					w.log.Warn("heartbeat job message", zap.Error(err))
				}
			}
		}
	}()
	return func() { close(done); <-finished }
}

// refresh frees ComfyUI's models and caches after a job (REFRESH_WORKER).
func (w *Worker) refresh(ctx context.Context, log *zap.Logger) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := w.comfy.Free(fctx, true, true); err != nil {
		log.Warn("free comfyui memory after the job", zap.Error(err))
	}
}

// deadLetter puts a job that used up its attempts on the pool's dead-letter
// stream with its last error, for inspection and replay.
func (w *Worker) deadLetter(ctx context.Context, job *proto.Job, msg *queue.Message, reason string, attempts []string) {
	pool := job.Pool
	if pool == "" {
		pool = w.cfg.Pool
	}
	m := &nats.Msg{Subject: proto.DLQSubject(pool), Data: msg.Data(), Header: nats.Header{}}
	m.Header.Set(DLQReasonHeader, reason)
	if data, err := json.Marshal(attempts); err == nil {
		m.Header.Set(DLQAttemptsHeader, string(data))
	}
	if _, err := w.q.JetStream().PublishMsg(ctx, m); err != nil {
		w.log.Warn("publish dead letter", zap.String("job_id", job.ID), zap.Error(err))
	}
}

func (w *Worker) event(ctx context.Context, ev *proto.Event) {
	if err := w.q.PublishEvent(ctx, ev); err != nil {
		w.log.Warn("publish event", zap.String("job_id", ev.JobID), zap.Error(err))
	}
}

// timeout is the job's execution timeout.
func (w *Worker) timeout(job *proto.Job) time.Duration {
	if p := job.Policy.ExecutionTimeout; p > 0 {
		return time.Duration(p) * time.Millisecond
	}
	return w.cfg.ExecutionTimeout
}

// exhausted fails a job whose earlier attempts all failed (their workers
// died, or ComfyUI did) before this one starts, dead-letters it and acks
// the delivery. It reports whether it did.
func (w *Worker) exhausted(ctx context.Context, job *proto.Job, msg *queue.Message, attempt int, log *zap.Logger) bool {
	if w.live == nil {
		return false
	}
	errs, err := w.live.AttemptErrors(ctx, job.ID)
	if err != nil || len(errs) < w.cfg.MaxAttempts {
		return false
	}
	last := errs[len(errs)-1]
	msgText := fmt.Sprintf("Job failed after %d attempts; the last: %s", len(errs), last)
	data, _ := json.Marshal(proto.Failure{Error: msgText, Details: errs})
	if _, err := w.store.Finish(ctx, job.ID, attempt, proto.StatusFailed, data, msgText); err != nil {
		switch {
		case errors.Is(err, status.ErrStale):
		case errors.Is(err, status.ErrTerminal):
			_ = msg.Ack(ctx)
		default:
			log.Warn("fail exhausted job", zap.Error(err))
			_ = msg.Nak(time.Second)
		}
		return true
	}
	log.Warn("job used up its attempts before this one", zap.Int("max_attempts", w.cfg.MaxAttempts))
	w.event(ctx, &proto.Event{JobID: job.ID, Type: proto.EventStatus, Status: proto.StatusFailed, Attempt: attempt, WorkerID: w.cfg.ID, Error: msgText})
	w.deadLetter(ctx, job, msg, msgText, errs)
	_ = msg.Ack(ctx)
	return true
}
