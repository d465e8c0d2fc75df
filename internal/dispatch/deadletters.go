package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Headers of a dead letter, as the worker writes them
// (worker.DLQReasonHeader and worker.DLQAttemptsHeader; a test checks
// they agree).
const (
	dlqReasonHeader   = "Cf-Dlq-Reason"
	dlqAttemptsHeader = "Cf-Dlq-Attempts"
)

// ErrNoDeadLetter: no dead letter has that sequence number (never, or it
// was replayed).
var ErrNoDeadLetter = errors.New("no such dead letter")

// DeadLetter is a job on the dead-letter stream (CF_DLQ).
type DeadLetter struct {
	// Seq is its sequence number in CF_DLQ, which Replay takes.
	Seq   uint64 `json:"seq"`
	Pool  string `json:"pool"`
	JobID string `json:"job_id"`
	// Reason is the last attempt's error.
	Reason string `json:"reason"`
	// Attempts is every failed attempt's error, oldest first.
	Attempts []string  `json:"attempts,omitempty"`
	Time     time.Time `json:"time"`
}

// ReplayStore is what replaying needs of the status records.
type ReplayStore interface {
	Retry(ctx context.Context, id string) (*proto.Record, error)
	Create(ctx context.Context, p status.CreateParams) (*proto.Record, bool, error)
	ClearAttempts(ctx context.Context, id string) error
	TrackTTL(ctx context.Context, id string, deadline time.Time) error
}

var _ ReplayStore = (*status.Store)(nil)

// DeadLetters lists and replays dead letters; the CLI and the dispatcher's
// HTTP API both use it.
type DeadLetters struct {
	q     *queue.Client
	store ReplayStore
}

// NewDeadLetters returns a DeadLetters on q and store.
func NewDeadLetters(q *queue.Client, store ReplayStore) *DeadLetters {
	return &DeadLetters{q: q, store: store}
}

// List returns up to limit dead letters (0: 100), oldest first, of one
// pool or ("" ) of all.
func (d *DeadLetters) List(ctx context.Context, pool string, limit int) ([]DeadLetter, error) {
	if limit <= 0 {
		limit = 100
	}
	s, err := d.q.JetStream().Stream(ctx, proto.DLQStream)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	filter := proto.DLQSubjects
	if pool != "" {
		filter = proto.DLQSubject(pool)
	}
	out := []DeadLetter{}
	var seq uint64 = 1
	for len(out) < limit {
		raw, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("list dead letters: %w", err)
		}
		out = append(out, decodeDeadLetter(raw))
		seq = raw.Sequence + 1
	}
	return out, nil
}

func decodeDeadLetter(raw *jetstream.RawStreamMsg) DeadLetter {
	dl := DeadLetter{Seq: raw.Sequence, Pool: strings.TrimPrefix(raw.Subject, proto.DLQSubject("")), Time: raw.Time}
	if job, _ := proto.DecodeJob(raw.Data); job != nil {
		dl.JobID = job.ID
	}
	if raw.Header != nil {
		dl.Reason = raw.Header.Get(dlqReasonHeader)
		_ = json.Unmarshal([]byte(raw.Header.Get(dlqAttemptsHeader)), &dl.Attempts)
	}
	return dl
}

// Replay queues dead letter seq again: its record goes back to IN_QUEUE
// (or is made anew when it expired), with a fresh attempt log, and the job
// is published on its pool and lane under the message id
// <id>.replay.<seq>, which JetStream's dedupe window has never seen. The
// dead letter is then removed.
func (d *DeadLetters) Replay(ctx context.Context, seq uint64) (*proto.Record, error) {
	s, err := d.q.JetStream().Stream(ctx, proto.DLQStream)
	if err != nil {
		return nil, fmt.Errorf("replay dead letter %d: %w", seq, err)
	}
	raw, err := s.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("replay dead letter %d: %w", seq, ErrNoDeadLetter)
	}
	if err != nil {
		return nil, fmt.Errorf("replay dead letter %d: %w", seq, err)
	}
	job, err := proto.DecodeJob(raw.Data)
	if err != nil {
		return nil, fmt.Errorf("replay dead letter %d: %w", seq, err)
	}
	rec, err := d.store.Retry(ctx, job.ID)
	if errors.Is(err, status.ErrNotFound) {
		// The record's retention ran out: make it anew.
		job.SubmittedAt = time.Now()
		if err = d.store.ClearAttempts(ctx, job.ID); err == nil {
			rec, _, err = d.store.Create(ctx, status.ParamsFor(job))
		}
		if err == nil && rec.Status != proto.StatusInQueue {
			err = fmt.Errorf("job %s is %s", job.ID, rec.Status)
		}
	}
	if err != nil {
		return rec, fmt.Errorf("replay dead letter %d: %w", seq, err)
	}
	job.SubmittedAt = rec.SubmittedAt // its TTL counts from the replay
	if err := d.store.TrackTTL(ctx, job.ID, job.SubmittedAt.Add(ttlOf(job))); err != nil {
		return rec, fmt.Errorf("replay dead letter %d: %w", seq, err)
	}
	if err := d.q.PublishEvent(ctx, &proto.Event{JobID: job.ID, Type: proto.EventStatus, Status: proto.StatusInQueue}); err != nil {
		return rec, fmt.Errorf("replay dead letter %d: %w", seq, err)
	}
	job.V = proto.Version
	data, err := json.Marshal(job)
	if err != nil {
		return rec, fmt.Errorf("replay dead letter %d: encode job: %w", seq, err)
	}
	msg := &nats.Msg{Subject: proto.JobSubject(job.Pool, job.Lane), Data: data, Header: nats.Header{}}
	msg.Header.Set(proto.MsgIDHeader, fmt.Sprintf("%s.replay.%d", job.ID, seq))
	if _, err := d.q.JetStream().PublishMsg(ctx, msg); err != nil {
		return rec, fmt.Errorf("replay dead letter %d: publish job %s: %w", seq, job.ID, err)
	}
	if err := s.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return rec, fmt.Errorf("replay dead letter %d: remove it: %w", seq, err)
	}
	return rec, nil
}

// ttlOf is the job's TTL, policy.ttl or RunPod's default.
func ttlOf(job *proto.Job) time.Duration {
	if job.Policy.TTL > 0 {
		return time.Duration(job.Policy.TTL) * time.Millisecond
	}
	return status.DefaultTTL
}

// Routes are the dead letters' HTTP API:
//
//	GET  /dlq?pool=P&limit=N   {"dead_letters": [DeadLetter…]}
//	POST /dlq/{seq}/replay     {"id": …, "status": "IN_QUEUE", "retries": n}
func (d *DeadLetters) Routes() []Route {
	return []Route{
		{Pattern: "GET /dlq", Handler: http.HandlerFunc(d.serveList)},
		{Pattern: "POST /dlq/{seq}/replay", Handler: http.HandlerFunc(d.serveReplay)},
	}
}

func (d *DeadLetters) serveList(w http.ResponseWriter, r *http.Request) {
	pool := r.URL.Query().Get("pool")
	if pool != "" {
		if err := proto.ValidID(pool); err != nil {
			writeError(w, http.StatusBadRequest, "pool: "+err.Error())
			return
		}
	}
	limit := 0
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit %q is not a number from 1 to 10000", v))
			return
		}
		limit = n
	}
	list, err := d.List(r.Context(), pool, limit)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"dead_letters": list})
}

func (d *DeadLetters) serveReplay(w http.ResponseWriter, r *http.Request) {
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil || seq == 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%q is not a dead letter's sequence number", r.PathValue("seq")))
		return
	}
	rec, err := d.Replay(r.Context(), seq)
	switch {
	case errors.Is(err, ErrNoDeadLetter):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, status.ErrIllegal), errors.Is(err, status.ErrTerminal):
		writeError(w, http.StatusConflict, err.Error())
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		writeJSON(w, http.StatusOK, map[string]any{"id": rec.ID, "status": rec.Status, "retries": rec.Retries})
	}
}
