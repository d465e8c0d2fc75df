package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"runtime/debug"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/proto"
)

// claimTimeout bounds the claim of a delivered job.
const claimTimeout = 10 * time.Second

// Why a job's context ended (context.Cause).
var (
	errCancelled = errors.New("job cancelled")
	errTimedOut  = errors.New("execution timeout")
	errStalled   = errors.New("no progress from ComfyUI")
	errComfyDown = errors.New("ComfyUI stopped answering")
	errLeaseLost = errors.New("lease lost: the job went to another worker")
	errEnded     = errors.New("the job ended elsewhere")
)

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
	// cancelled: a cancel stopped it; lost: the attempt lost its lease;
	// ended: the job ended elsewhere (a cancel seen at renewal).
	cancelled, lost, ended bool
}

// handle runs one delivery to its end. Every change of the job's state is
// the lifecycle core's: the claim, the lease's renewals, and the ending
// (finished, given back, or dropped without a word when the lease was
// lost), each of which also settles the delivery.
func (w *Worker) handle(ctx context.Context, msg *queue.Message) {
	job, err := proto.DecodeJob(msg.Data())
	if err != nil {
		w.core.Discard(ctx, msg, err.Error())
		return
	}
	need := jobNeed(job)
	tier, handedBack := w.route(ctx, job, need, msg)
	if handedBack {
		return
	}
	log := w.log.With(zap.String("job_id", job.ID))
	jctx, cancelJob := context.WithCancelCause(ctx)
	defer cancelJob(nil)
	// Tracked before the claim: a cancel that lands after the claim finds
	// the job; one before it made the record terminal, which Claim sees.
	ref := &jobRef{id: job.ID, cancel: cancelJob, yields: job.Lane == proto.LaneBatch && !msg.BatchTurn()}
	untrack := w.track(ref)
	defer untrack()

	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), claimTimeout)
	cl, err := w.core.Claim(cctx, msg, job, lifecycle.Holder{
		WorkerID: w.cfg.ID, LeaseTTL: w.leaseTTL(), ExecTimeout: w.timeout(job), MaxAttempts: w.cfg.MaxAttempts,
	})
	cancel()
	if err != nil {
		switch {
		case errors.Is(err, lifecycle.ErrEnded), errors.Is(err, lifecycle.ErrHeld):
			log.Debug("job not run", zap.Error(err))
		case errors.Is(err, lifecycle.ErrUsedUp):
			log.Info("job not run", zap.Error(err))
		default:
			log.Warn("claim job", zap.Error(err))
		}
		return
	}
	log = log.With(zap.Int("attempt", cl.Attempt))
	w.noteWarm(need)
	w.metrics.claimed(cl.Record)
	if !need.Empty() {
		w.metrics.routed(tier)
	}
	w.setState(proto.WorkerRunning, job.ID)

	stopRenew := w.renew(jctx, cl, cancelJob, log)
	ex := newExecution(w, log, job, cl)
	w.mu.Lock()
	ref.ex = ex
	w.mu.Unlock()
	began := time.Now()
	out := w.run(jctx, ex)
	stopRenew()
	ex.removeInputs(ctx) // however the attempt ended, before the ending is written
	ex.releaseModels()   // its prompt is out of ComfyUI: the cache may evict them
	if w.cfg.RefreshWorker {
		w.refresh(ctx, log)
	}
	w.metrics.ran(out.status, time.Since(began))

	switch {
	case out.lost:
		log.Warn("lease lost while running; the job is another worker's now, dropped without writing")
		return
	case out.ended:
		log.Info("job ended elsewhere while running (cancelled); its prompt was stopped")
		return
	case out.cancelled:
		w.core.Cancelled(ctx, cl)
		log.Info("job cancelled; its prompt was stopped in ComfyUI")
		return
	}
	w.noteError(out)
	if out.status == "" {
		r := lifecycle.Requeue{Reason: out.reason, Delay: out.requeueDelay, Counted: out.retryable}
		if out.final != nil {
			r.Final = out.final.result()
		}
		err = w.core.Requeue(ctx, cl, r)
	} else {
		err = w.core.Finish(ctx, cl, out.result())
	}
	if err != nil {
		log.Warn("end job", zap.Error(err))
	}
}

// result is the outcome as the lifecycle core writes it.
func (o outcome) result() lifecycle.Result {
	data, err := json.Marshal(o.output)
	if err != nil {
		data, _ = json.Marshal(proto.Failure{Error: fmt.Sprintf("encode output: %v", err)})
	}
	return lifecycle.Result{Status: o.status, Output: data, Error: o.errMsg}
}

// renew keeps the claim's lease every third of its TTL, whatever the
// job's progress (a stuck prompt is the stall watch's business), and ends
// the job's context when the lease is lost or the job ended elsewhere. A
// renewal that fails because Redis is away is tried again at the next
// tick: the lease comes back to life as long as nobody took it.
func (w *Worker) renew(ctx context.Context, cl *lifecycle.Claim, cancelJob context.CancelCauseFunc, log *zap.Logger) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		// Every third of the lease, or of AckWait when that is shorter:
		// a renewal also heartbeats the delivery, which must not go
		// AckWait without one (it would be redelivered to another worker).
		every := min(cl.TTL, w.cfg.AckWait) / 3
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), every)
			err := w.core.Renew(rctx, cl)
			cancel()
			switch {
			case errors.Is(err, lifecycle.ErrLeaseLost):
				cancelJob(errLeaseLost)
				return
			case errors.Is(err, lifecycle.ErrEnded):
				cancelJob(errEnded)
				return
			case err != nil:
				log.Warn("renew job lease", zap.Error(err))
			}
		}
	}()
	return func() { close(done); <-finished }
}

// leaseTTL is how long a job's lease lasts without renewal.
func (w *Worker) leaseTTL() time.Duration {
	if w.cfg.LeaseTTL > 0 {
		return w.cfg.LeaseTTL
	}
	if w.fleet != nil {
		return w.fleet.WorkerTTL()
	}
	return w.cfg.AckWait
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
	if ex.gaveWay(err) {
		return outcome{reason: reasonGaveWay}
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
		rerr *modelRetry
	)
	unreachable := w.unreachableMessage(ex)
	switch {
	case errors.Is(cause, errLeaseLost):
		return outcome{lost: true}
	case errors.Is(cause, errEnded):
		return outcome{ended: true}
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
	case errors.As(err, &rerr):
		msg := "Failed to fetch " + rerr.err.Error()
		return retry(msg, w.cfg.RetryDelay, failed(msg))
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
		// worker-comfyui names the host here ("ComfyUI server
		// (127.0.0.1:8188) not …"); the job's submitter must not learn
		// where the fleet's ComfyUI listens, so the worker's log alone
		// says it.
		return failed("ComfyUI server not reachable after multiple retries.")
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

// refresh frees ComfyUI's models and caches after a job (REFRESH_WORKER).
func (w *Worker) refresh(ctx context.Context, log *zap.Logger) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := w.comfy.Free(fctx, true, true); err != nil {
		log.Warn("free comfyui memory after the job", zap.Error(err))
		return
	}
	w.forgetWarm() // ComfyUI unloads its models before the next prompt
}

// timeout is the job's execution timeout.
func (w *Worker) timeout(job *proto.Job) time.Duration {
	if p := job.Policy.ExecutionTimeout; p > 0 {
		return proto.Millis(p)
	}
	return w.cfg.ExecutionTimeout
}
