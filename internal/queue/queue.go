package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Config sizes the streams and buckets. The zero value is the default of
// every field.
type Config struct {
	// Replicas of each stream and bucket; 0 means 1 (a single server).
	Replicas int
	// DedupeWindow is how long JetStream remembers a Nats-Msg-Id; 0 means
	// 2 minutes.
	DedupeWindow time.Duration
	// EventsMaxAge and EventsMaxBytes bound CF_EVENTS (the oldest events
	// go first); 0 means 24 hours and 1 GiB.
	EventsMaxAge   time.Duration
	EventsMaxBytes int64
	// DLQMaxAge and DLQMaxBytes bound CF_DLQ (the oldest dead letters go
	// first); 0 means 14 days and 1 GiB.
	DLQMaxAge   time.Duration
	DLQMaxBytes int64
	// BlobTTL is how long inputs and outputs live in the object store; 0
	// means blob.DefaultTTL.
	BlobTTL time.Duration
	// MemoryStorage keeps streams in memory instead of files (benchmarks).
	MemoryStorage bool
}

// Defaults of Config.
const (
	DefaultDedupeWindow   = 2 * time.Minute
	DefaultEventsMaxAge   = 24 * time.Hour
	DefaultEventsMaxBytes = 1 << 30
	DefaultDLQMaxAge      = 14 * 24 * time.Hour
	DefaultDLQMaxBytes    = 1 << 30
	// previewsMaxAge and previewsMaxBytes bound CF_PREVIEWS, which keeps
	// only each job's latest picture.
	previewsMaxAge   = 10 * time.Minute
	previewsMaxBytes = 64 << 20
)

// Validate names the first setting that cannot be used.
func (c Config) Validate() error {
	switch {
	case c.Replicas < 0 || c.Replicas > 5:
		return fmt.Errorf("stream replicas %d is not from 1 to 5", c.Replicas)
	case c.DedupeWindow < 0, c.EventsMaxAge < 0, c.DLQMaxAge < 0, c.BlobTTL < 0:
		return errors.New("stream ages and windows must not be negative")
	case c.EventsMaxBytes < 0, c.DLQMaxBytes < 0:
		return errors.New("stream sizes must not be negative")
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.DedupeWindow == 0 {
		c.DedupeWindow = DefaultDedupeWindow
	}
	if c.EventsMaxAge == 0 {
		c.EventsMaxAge = DefaultEventsMaxAge
	}
	if c.EventsMaxBytes == 0 {
		c.EventsMaxBytes = DefaultEventsMaxBytes
	}
	if c.DLQMaxAge == 0 {
		c.DLQMaxAge = DefaultDLQMaxAge
	}
	if c.DLQMaxBytes == 0 {
		c.DLQMaxBytes = DefaultDLQMaxBytes
	}
	if c.BlobTTL == 0 {
		c.BlobTTL = blob.DefaultTTL
	}
	return c
}

// ErrDuplicate is returned when a message id was already published within
// the dedupe window; the message is on its stream once.
var ErrDuplicate = errors.New("duplicate message id")

// ErrTooLarge is returned (inside a *TooLargeError) for a job message
// larger than the NATS server takes; trying again cannot change that.
var ErrTooLarge = errors.New("job message too large")

// TooLargeError is a job message over the server's max_payload.
type TooLargeError struct {
	JobID string
	// Size is the encoded message and Limit the largest one the server
	// takes (MaxJobMessage), in bytes.
	Size, Limit int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("the job message of %s is %d bytes, more than the %d bytes a NATS message may carry here (the server's max_payload, less room for headers)", e.JobID, e.Size, e.Limit)
}

func (e *TooLargeError) Unwrap() error { return ErrTooLarge }

// jobHeaderRoom is what a job message leaves of the server's max_payload
// for its headers: the message id (a job id of at most 128 characters and
// a suffix such as ".retry.12") and NATS's header framing, with room to
// spare.
const jobHeaderRoom = 512

// MaxJobMessage is the size of the largest encoded job message (its JSON)
// that can be published: the server's max_payload (1 MB by default) less
// room for headers. 0 when the server has not said yet.
func (c *Client) MaxJobMessage() int {
	return max(int(c.nc.MaxPayload())-jobHeaderRoom, 0)
}

// Client publishes and consumes comfyfleet's streams and buckets. Open it
// with Ensure (a role process) or Attach (a tool).
type Client struct {
	nc *nats.Conn
	js jetstream.JetStream

	blobs    *ObjectStore
	requests *requestStore
	events   *eventLog
	previews *eventLog
	// holdStream is the hold stream's handle, looked up on first use.
	holdStream atomic.Pointer[jetstream.Stream]
}

// New wraps a NATS connection. Call Ensure or Attach before using the
// object store or the request bucket.
func New(nc *nats.Conn) (*Client, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	c := &Client{nc: nc, js: js}
	c.requests = &requestStore{js: js}
	c.events = &eventLog{js: js, name: proto.EventsStream}
	c.previews = &eventLog{js: js, name: proto.PreviewStream}
	return c, nil
}

// Ensure creates or updates the streams and buckets; every role process
// calls it at start, so it is idempotent and safe to run concurrently.
func (c *Client) Ensure(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.withDefaults()
	storage := jetstream.FileStorage
	if cfg.MemoryStorage {
		storage = jetstream.MemoryStorage
	}
	streams := []jetstream.StreamConfig{{
		Name:        proto.SubmitStream,
		Description: "intake: jobs from the adapter, batch producers and the CLI",
		Subjects:    []string{proto.SubmitSubjects},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     storage,
		Replicas:    cfg.Replicas,
		Duplicates:  cfg.DedupeWindow,
	}, {
		Name:        proto.JobsStream,
		Description: "admitted jobs by pool and lane",
		Subjects:    []string{proto.JobSubjects},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     storage,
		Replicas:    cfg.Replicas,
		Duplicates:  cfg.DedupeWindow,
	}, {
		Name:        proto.HoldStream,
		Description: "admitted jobs waiting for their turn in their lane, by pool, lane and tenant",
		Subjects:    []string{proto.HoldSubjects},
		Retention:   jetstream.LimitsPolicy,
		Storage:     storage,
		Replicas:    cfg.Replicas,
		Duplicates:  cfg.DedupeWindow,
		AllowDirect: true,
	}, {
		Name:        proto.EventsStream,
		Description: "job status transitions and progress",
		Subjects:    []string{proto.EventSubjects},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		Storage:     storage,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.EventsMaxAge,
		MaxBytes:    cfg.EventsMaxBytes,
	}, {
		Name:        proto.DLQStream,
		Description: "jobs that exhausted their attempts",
		Subjects:    []string{proto.DLQSubjects},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		Storage:     storage,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.DLQMaxAge,
		MaxBytes:    cfg.DLQMaxBytes,
		// JetStream refuses a dedupe window longer than the max age.
		Duplicates: min(cfg.DedupeWindow, cfg.DLQMaxAge),
	}, {
		Name:              proto.PreviewStream,
		Description:       "the latest preview picture of each running job",
		Subjects:          []string{proto.PreviewSubjects},
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		Storage:           jetstream.MemoryStorage,
		Replicas:          cfg.Replicas,
		MaxAge:            previewsMaxAge,
		MaxBytes:          previewsMaxBytes,
		MaxMsgsPerSubject: 1,
	}}
	for _, sc := range streams {
		// Create is a no-op for a stream that already has these settings;
		// only a stream with other settings is updated. (Updating on every
		// start made every process rewrite the stream's store config while
		// others created consumers on it.)
		_, err := c.js.CreateStream(ctx, sc)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			_, err = c.js.UpdateStream(ctx, sc)
		}
		if err != nil {
			return fmt.Errorf("ensure stream %s: %w", sc.Name, err)
		}
	}
	blobs, err := OpenObjectStore(ctx, c.js, ObjectStoreConfig{TTL: cfg.BlobTTL, Replicas: cfg.Replicas, MemoryStorage: cfg.MemoryStorage})
	if err != nil {
		return err
	}
	c.blobs = blobs
	return c.requests.ensure(ctx, cfg.Replicas)
}

// Attach opens the existing streams and buckets without creating or
// reconfiguring them: for tools (the CLI) that must not change a
// deployment's settings.
func (c *Client) Attach(ctx context.Context) error {
	if _, err := c.js.Stream(ctx, proto.SubmitStream); err != nil {
		return fmt.Errorf("attach to stream %s (is the fleet running?): %w", proto.SubmitStream, err)
	}
	blobs, err := AttachObjectStore(ctx, c.js, proto.BlobBucket)
	if err != nil {
		return err
	}
	c.blobs = blobs
	return nil
}

// Blobs is the object store: the blob store of a fleet without S3.
func (c *Client) Blobs() blob.Store {
	if c.blobs == nil {
		return nil
	}
	return c.blobs
}

// Close closes the NATS connection.
func (c *Client) Close() { c.nc.Close() }

// Connected reports whether the NATS connection is up.
func (c *Client) Connected() bool { return c.nc.IsConnected() }

// Submit publishes a job on cf.submit.<source>.<tenant> (the job's
// tenant) with Nats-Msg-Id = job id and waits for the PubAck, the durable
// receipt. It returns the job's sequence in the intake stream, which names
// this submission.
func (c *Client) Submit(ctx context.Context, source string, job *proto.Job) (uint64, error) {
	return c.publishJob(ctx, proto.SubmitSubject(source, job.Tenant), job, job.ID)
}

// PublishJob publishes an admitted job on cf.jobs.<pool>.<lane> under the
// message id msgID.
func (c *Client) PublishJob(ctx context.Context, job *proto.Job, msgID string) error {
	_, err := c.publishJob(ctx, proto.JobSubject(job.Pool, job.Lane), job, msgID)
	return err
}

func (c *Client) publishJob(ctx context.Context, subject string, job *proto.Job, msgID string) (uint64, error) {
	job.V = proto.Version
	data, err := json.Marshal(job)
	if err != nil {
		return 0, fmt.Errorf("encode job %s: %w", job.ID, err)
	}
	if limit := c.MaxJobMessage(); limit > 0 && len(data) > limit {
		return 0, &TooLargeError{JobID: job.ID, Size: len(data), Limit: limit}
	}
	ack, err := c.js.PublishMsg(ctx, &nats.Msg{
		Subject: subject,
		Data:    data,
		Header:  nats.Header{proto.MsgIDHeader: []string{msgID}},
	})
	if errors.Is(err, nats.ErrMaxPayload) {
		return 0, &TooLargeError{JobID: job.ID, Size: len(data), Limit: c.MaxJobMessage()}
	}
	if err != nil {
		return 0, fmt.Errorf("publish job %s on %s: %w", job.ID, subject, err)
	}
	if ack.Duplicate {
		return ack.Sequence, fmt.Errorf("publish job %s on %s: %w", job.ID, subject, ErrDuplicate)
	}
	return ack.Sequence, nil
}

// Reject republishes a submission of tenant that names no usable job, or
// one whose id another tenant holds, on proto.RejectSubject(tenant).
func (c *Client) Reject(tenant string, data []byte, reason string) error {
	msg := &nats.Msg{Subject: proto.RejectSubject(tenant), Data: data, Header: nats.Header{}}
	msg.Header.Set(proto.RejectReasonHeader, reason)
	if err := c.nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("publish reject: %w", err)
	}
	return nil
}

// A delivery of a work-queue message is settled by sending JetStream's ack
// protocol to its ack subject (Message.Reply). Any process may do it: the
// worker that holds it, an adapter replica that got a RunPod worker's
// result, the sweeper that found its holder dead.

// Ack acknowledges the delivery and waits for the server's confirmation,
// so that a crash after Ack returns never redelivers it.
func (c *Client) Ack(ctx context.Context, reply string) error {
	if _, err := c.nc.RequestWithContext(ctx, reply, []byte("+ACK")); err != nil {
		return fmt.Errorf("ack delivery: %w", err)
	}
	return nil
}

// Nak asks for the delivery to be redelivered after delay (0: at once).
func (c *Client) Nak(reply string, delay time.Duration) error {
	body := []byte("-NAK")
	if delay > 0 {
		body = []byte(`-NAK {"delay": ` + strconv.FormatInt(delay.Nanoseconds(), 10) + `}`)
	}
	if err := c.nc.Publish(reply, body); err != nil {
		return fmt.Errorf("nak delivery: %w", err)
	}
	return nil
}

// InProgress resets the delivery's AckWait timer: it is being worked on.
func (c *Client) InProgress(reply string) error {
	if err := c.nc.Publish(reply, []byte("+WPI")); err != nil {
		return fmt.Errorf("heartbeat delivery: %w", err)
	}
	return nil
}

// Term removes the delivered message without redelivery.
func (c *Client) Term(reply string) error {
	if err := c.nc.Publish(reply, []byte("+TERM")); err != nil {
		return fmt.Errorf("terminate delivery: %w", err)
	}
	return nil
}

// Flush waits until the server has what was published so far.
func (c *Client) Flush(ctx context.Context) error { return c.nc.FlushWithContext(ctx) }

// PublishCancel fans a cancel out to every worker.
func (c *Client) PublishCancel(jobID string) error {
	data, _ := json.Marshal(proto.Cancel{JobID: jobID})
	if err := c.nc.Publish(proto.CancelSubject, data); err != nil {
		return fmt.Errorf("publish cancel of %s: %w", jobID, err)
	}
	return nil
}

// SubscribeCancels delivers every cancel until stop is called.
func (c *Client) SubscribeCancels(fn func(jobID string)) (stop func(), err error) {
	sub, err := c.nc.Subscribe(proto.CancelSubject, func(m *nats.Msg) {
		var cm proto.Cancel
		if json.Unmarshal(m.Data, &cm) == nil && cm.JobID != "" {
			fn(cm.JobID)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe cancels: %w", err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

// PublishControl tells every worker that the operator's controls (paused
// lanes, draining workers) changed.
func (c *Client) PublishControl() error {
	if err := c.nc.Publish(proto.ControlSubject, nil); err != nil {
		return fmt.Errorf("publish control change: %w", err)
	}
	return nil
}

// SubscribeControl calls fn on every control change until stop is called.
func (c *Client) SubscribeControl(fn func()) (stop func(), err error) {
	sub, err := c.nc.Subscribe(proto.ControlSubject, func(*nats.Msg) { fn() })
	if err != nil {
		return nil, fmt.Errorf("subscribe controls: %w", err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

// SubscribeRejects delivers every rejected submission of tenant ("*":
// of every tenant), its data and the reason, until stop is called.
func (c *Client) SubscribeRejects(tenant string, fn func(data []byte, reason string)) (stop func(), err error) {
	sub, err := c.nc.Subscribe(proto.RejectSubject(tenant), func(m *nats.Msg) {
		fn(m.Data, m.Header.Get(proto.RejectReasonHeader))
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe rejects: %w", err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}
