package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Config sizes the streams. The zero value is the default of every field.
type Config struct {
	// Replicas of each stream; 0 means 1 (a single server).
	Replicas int
	// DedupeWindow is how long JetStream remembers a Nats-Msg-Id; 0 means
	// 2 minutes.
	DedupeWindow time.Duration
	// EventsMaxAge is how long events are kept; 0 means 24 hours.
	EventsMaxAge time.Duration
	// MemoryStorage keeps streams in memory instead of files (benchmarks).
	MemoryStorage bool
}

func (c Config) withDefaults() Config {
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.DedupeWindow == 0 {
		c.DedupeWindow = 2 * time.Minute
	}
	if c.EventsMaxAge == 0 {
		c.EventsMaxAge = 24 * time.Hour
	}
	return c
}

// ErrDuplicate is returned by Submit when the job id was already submitted
// within the dedupe window; the job is on the queue once.
var ErrDuplicate = errors.New("duplicate job id")

// Client publishes and consumes comfyfleet's streams.
type Client struct {
	nc *nats.Conn
	js jetstream.JetStream
}

// New wraps a NATS connection.
func New(nc *nats.Conn) (*Client, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return &Client{nc: nc, js: js}, nil
}

// JetStream exposes the JetStream handle for the blob store.
func (c *Client) JetStream() jetstream.JetStream { return c.js }

// Conn exposes the NATS connection for core subscriptions.
func (c *Client) Conn() *nats.Conn { return c.nc }

// Ensure creates or updates the streams; every process calls it at start,
// so it is idempotent and safe to run concurrently.
func (c *Client) Ensure(ctx context.Context, cfg Config) error {
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
		Name:        proto.EventsStream,
		Description: "job status transitions and progress",
		Subjects:    []string{proto.EventSubjects},
		Retention:   jetstream.LimitsPolicy,
		Storage:     storage,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.EventsMaxAge,
	}, {
		Name:        proto.DLQStream,
		Description: "jobs that exhausted their attempts",
		Subjects:    []string{proto.DLQSubjects},
		Retention:   jetstream.LimitsPolicy,
		Storage:     storage,
		Replicas:    cfg.Replicas,
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
	return nil
}

// Submit publishes a job on cf.submit.<source> with Nats-Msg-Id = job id
// and waits for the PubAck, the durable receipt.
func (c *Client) Submit(ctx context.Context, source string, job *proto.Job) error {
	return c.publishJob(ctx, proto.SubmitSubject(source), job)
}

// Admit publishes an admitted job on cf.jobs.<pool>.<lane>.
func (c *Client) Admit(ctx context.Context, job *proto.Job) error {
	return c.publishJob(ctx, proto.JobSubject(job.Pool, job.Lane), job)
}

func (c *Client) publishJob(ctx context.Context, subject string, job *proto.Job) error {
	job.V = proto.Version
	data, err := json.Marshal(job)
	if err != nil {
		return fmt.Errorf("encode job %s: %w", job.ID, err)
	}
	ack, err := c.js.PublishMsg(ctx, &nats.Msg{
		Subject: subject,
		Data:    data,
		Header:  nats.Header{proto.MsgIDHeader: []string{job.ID}},
	})
	if err != nil {
		return fmt.Errorf("publish job %s on %s: %w", job.ID, subject, err)
	}
	if ack.Duplicate {
		return fmt.Errorf("publish job %s on %s: %w", job.ID, subject, ErrDuplicate)
	}
	return nil
}

// Reject republishes an undecodable submission on proto.RejectSubject.
func (c *Client) Reject(data []byte, reason string) error {
	msg := &nats.Msg{Subject: proto.RejectSubject, Data: data, Header: nats.Header{}}
	msg.Header.Set(proto.RejectReasonHeader, reason)
	if err := c.nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("publish reject: %w", err)
	}
	return nil
}

// PublishEvent appends an event to the job's event subject.
func (c *Client) PublishEvent(ctx context.Context, ev *proto.Event) error {
	ev.V = proto.Version
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode event for %s: %w", ev.JobID, err)
	}
	if _, err := c.js.Publish(ctx, proto.EventSubject(ev.JobID), data); err != nil {
		return fmt.Errorf("publish event for %s: %w", ev.JobID, err)
	}
	return nil
}

// SubscribeEvents delivers the job's events published from now on until
// the returned stop function is called. Subscribe before causing the
// events (e.g. before submitting) so that none is missed.
func (c *Client) SubscribeEvents(jobID string, fn func(*proto.Event)) (stop func(), err error) {
	sub, err := c.nc.Subscribe(proto.EventSubject(jobID), func(m *nats.Msg) {
		ev, err := proto.DecodeEvent(m.Data)
		if err != nil {
			return // not ours to judge; the stream keeps it for inspection
		}
		fn(ev)
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe events of %s: %w", jobID, err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

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
