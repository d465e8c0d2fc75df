package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Events live in CF_EVENTS on cf.events.<job>.<class> (proto.Event.Subject):
// status transitions are published through JetStream and wait for the
// stream's receipt; progress goes out without waiting (a lost progress
// event is superseded by the next); previews go to CF_PREVIEWS, which keeps
// only each job's latest, so a large picture never takes the place of a
// status event and never waits in front of one.

func encodeEvent(ev *proto.Event) ([]byte, error) {
	ev.V = proto.Version
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode %s event for %s: %w", ev.Type, ev.JobID, err)
	}
	return data, nil
}

// PublishEvent appends an event to the job's events and waits for the
// stream to store it.
func (c *Client) PublishEvent(ctx context.Context, ev *proto.Event) error {
	data, err := encodeEvent(ev)
	if err != nil {
		return err
	}
	if _, err := c.js.Publish(ctx, ev.Subject(), data); err != nil {
		return fmt.Errorf("publish %s event for %s: %w", ev.Type, ev.JobID, err)
	}
	return nil
}

// PublishEventNoWait sends an event without waiting for the stream's
// receipt: for progress and previews, whose loss the next one repairs.
func (c *Client) PublishEventNoWait(ev *proto.Event) error {
	data, err := encodeEvent(ev)
	if err != nil {
		return err
	}
	if err := c.nc.Publish(ev.Subject(), data); err != nil {
		return fmt.Errorf("publish %s event for %s: %w", ev.Type, ev.JobID, err)
	}
	return nil
}

// subscribe delivers the decoded events of a subject until stop.
func (c *Client) subscribe(subject string, fn func(*proto.Event)) (stop func(), err error) {
	sub, err := c.nc.Subscribe(subject, func(m *nats.Msg) {
		ev, err := proto.DecodeEvent(m.Data)
		if err != nil {
			return // not ours to judge; the stream keeps it for inspection
		}
		fn(ev)
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s: %w", subject, err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

// SubscribeEvents delivers every event of the job published from now on
// until stop is called. Subscribe before causing the events (e.g. before
// submitting) so that none is missed.
func (c *Client) SubscribeEvents(jobID string, fn func(*proto.Event)) (stop func(), err error) {
	return c.subscribe(proto.JobEventSubjects(jobID), fn)
}

// SubscribeFinal delivers the job's final event (its terminal status).
func (c *Client) SubscribeFinal(jobID string, fn func(*proto.Event)) (stop func(), err error) {
	return c.subscribe(proto.JobClassSubjects(jobID, proto.EventClassFinal), fn)
}

// SubscribeStatuses delivers every status transition of every job, for a
// watcher of many jobs (a batch).
func (c *Client) SubscribeStatuses(fn func(*proto.Event)) (stop func(), err error) {
	var stops []func()
	for _, subj := range proto.StatusEventSubjects {
		s, err := c.subscribe(subj, fn)
		if err != nil {
			for _, s := range stops {
				s()
			}
			return nil, err
		}
		stops = append(stops, s)
	}
	return func() {
		for _, s := range stops {
			s()
		}
	}, nil
}

// SubscribeAll delivers every event of every job, progress and previews
// included, until stop: one subscription for a process that shows the
// whole fleet live (the console), which fans them out itself.
func (c *Client) SubscribeAll(fn func(*proto.Event)) (stop func(), err error) {
	events, err := c.subscribe(proto.EventSubjects, fn)
	if err != nil {
		return nil, err
	}
	previews, err := c.subscribe(proto.PreviewSubjects, fn)
	if err != nil {
		events()
		return nil, err
	}
	return func() { events(); previews() }, nil
}

// Wake tells a waiter (a held /stream, /runsync or /status-sync) that a
// job may have changed, without delivering what changed: one of the job's
// events was published, or the connection to NATS came back after a drop,
// during which events may have been missed. The waiter then reads the
// job's state itself. Signals that come while one is pending merge into
// it, so a waiter costs nothing while nothing happens: no timer, no
// periodic read. It is one core subscription on the job's subject, made
// and removed per waiter: BenchmarkWaiters found it ~90 µs of CPU dearer
// per waiter than one subscription per process on every job's events
// fanned out by job id, but that one pays ~1 µs for every event of the
// fleet whether anyone waits or not, and a fleet's events far outnumber
// its long-polls.
type Wake struct {
	nc     *nats.Conn
	subs   []*nats.Subscription
	c      chan struct{}
	status chan nats.Status
}

// WakeOnEvents wakes on every event of the job (status, final, progress
// and stream chunks) and on its previews. When it returns, the server has the subscription: a
// read of the job made after it sees every change whose event it would
// not get, so no wake-up is lost.
func (c *Client) WakeOnEvents(jobID string) (*Wake, error) {
	return c.wake(true, proto.JobEventSubjects(jobID), proto.JobPreviewSubjects(jobID))
}

// WakeOnFinal wakes on the job's final event (its terminal status), for a
// job that exists already; see WakeOnEvents.
func (c *Client) WakeOnFinal(jobID string) (*Wake, error) {
	return c.wake(true, proto.JobClassSubjects(jobID, proto.EventClassFinal))
}

// WakeOnFinalOfNew is WakeOnFinal for a job that this client is about to
// submit: it spares the round trip, because the submission goes out on the
// same connection after the subscription, so the server has the
// subscription before the job can have an event.
func (c *Client) WakeOnFinalOfNew(jobID string) (*Wake, error) {
	return c.wake(false, proto.JobClassSubjects(jobID, proto.EventClassFinal))
}

// wakeSyncTimeout bounds the round trip that makes sure the server has a
// wake's subscription.
const wakeSyncTimeout = 5 * time.Second

func (c *Client) wake(sync bool, subjects ...string) (*Wake, error) {
	w := &Wake{nc: c.nc, c: make(chan struct{}, 1)}
	// Listening for reconnections first: a drop from here on wakes the
	// waiter once the connection is back.
	w.status = c.nc.StatusChanged(nats.CONNECTED)
	for _, subject := range subjects {
		sub, err := c.nc.Subscribe(subject, func(*nats.Msg) { w.signal() })
		if err != nil {
			w.Stop()
			return nil, fmt.Errorf("subscribe to %s: %w", subject, err)
		}
		w.subs = append(w.subs, sub)
	}
	if sync {
		if err := c.nc.FlushTimeout(wakeSyncTimeout); err != nil {
			// Disconnected, or the server is slow: the subscription is
			// made again (or arrives) with the connection, and the
			// reconnection wakes the waiter, which then reads again.
			w.signal()
		}
	}
	return w, nil
}

func (w *Wake) signal() {
	select {
	case w.c <- struct{}{}:
	default:
	}
}

// Wait blocks until the job may have changed since the wake was made or
// since the last Wait returned, or until ctx ends (its error).
func (w *Wake) Wait(ctx context.Context) error {
	select {
	case <-w.c:
		return nil
	case <-w.status:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stop ends the wake; it is idempotent.
func (w *Wake) Stop() {
	for _, sub := range w.subs {
		_ = sub.Unsubscribe()
	}
	w.nc.RemoveStatusListener(w.status)
}

// LoggedEvent is an event with its sequence number in the events stream.
type LoggedEvent struct {
	Seq uint64
	proto.Event
}

// eventLog reads job events in CF_EVENTS by sequence number with the
// stream's direct get, so it needs no consumer and keeps no state: any
// replica reads the same log.
type eventLog struct {
	js   jetstream.JetStream
	name string // CF_EVENTS or CF_PREVIEWS

	mu     sync.Mutex
	stream jetstream.Stream
}

func (l *eventLog) open(ctx context.Context) (jetstream.Stream, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stream != nil {
		return l.stream, nil
	}
	s, err := l.js.Stream(ctx, l.name)
	if err != nil {
		return nil, fmt.Errorf("open stream %s: %w", l.name, err)
	}
	l.stream = s
	return s, nil
}

// ReadEvents returns up to max events of the job stored after sequence
// after, oldest first, and the sequence of the last one it looked at
// (after when there is none). Events that cannot be decoded are skipped but
// counted in last, so a reader never stalls on them.
func (c *Client) ReadEvents(ctx context.Context, jobID string, after uint64, max int) (evs []LoggedEvent, last uint64, err error) {
	s, err := c.events.open(ctx)
	if err != nil {
		return nil, after, err
	}
	last = after
	subject := proto.JobEventSubjects(jobID)
	for len(evs) < max {
		m, err := s.GetMsg(ctx, last+1, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return evs, last, fmt.Errorf("read events of %s: %w", jobID, err)
		}
		last = m.Sequence
		var ev proto.Event
		if json.Unmarshal(m.Data, &ev) != nil || ev.JobID != jobID {
			continue
		}
		evs = append(evs, LoggedEvent{Seq: m.Sequence, Event: ev})
	}
	return evs, last, nil
}

// LastEvent returns the job's latest event, or nil when it has none.
func (c *Client) LastEvent(ctx context.Context, jobID string) (*LoggedEvent, error) {
	s, err := c.events.open(ctx)
	if err != nil {
		return nil, err
	}
	m, err := s.GetLastMsgForSubject(ctx, proto.JobEventSubjects(jobID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read last event of %s: %w", jobID, err)
	}
	var ev proto.Event
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		return nil, nil
	}
	return &LoggedEvent{Seq: m.Sequence, Event: ev}, nil
}

// LatestPreview returns the latest preview picture of a job with its
// sequence in CF_PREVIEWS (which keeps each job's latest for ten minutes),
// or nil when it has none.
func (c *Client) LatestPreview(ctx context.Context, jobID string) (*LoggedEvent, error) {
	s, err := c.previews.open(ctx)
	if err != nil {
		return nil, err
	}
	m, err := s.GetLastMsgForSubject(ctx, proto.JobPreviewSubjects(jobID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read latest preview of %s: %w", jobID, err)
	}
	ev, err := proto.DecodeEvent(m.Data)
	if err != nil || ev.Type != proto.EventPreview || ev.Preview == nil {
		return nil, nil // not a preview this reader can hand out
	}
	return &LoggedEvent{Seq: m.Sequence, Event: *ev}, nil
}

// FinalFeed is a durable consumer of every job's final event, shared by
// the dispatcher replicas that deliver webhooks: a delivery not
// acknowledged (its replica died) goes to another replica after AckWait.
type FinalFeed struct {
	it jetstream.MessagesContext
}

// FinalFeedConfig configures OpenFinalFeed.
type FinalFeedConfig struct {
	// AckWait is how long a delivery may stay unanswered before another
	// replica gets it.
	AckWait time.Duration
	// MaxPending bounds the deliveries in hand, so that nothing ages toward
	// AckWait in a buffer.
	MaxPending int
}

// OpenFinalFeed opens (creating it if needed) the webhook consumer of the
// final events. Events older than the consumer are not delivered: it is
// made before the first job can end.
func (c *Client) OpenFinalFeed(ctx context.Context, cfg FinalFeedConfig) (*FinalFeed, error) {
	cons, err := c.js.CreateOrUpdateConsumer(ctx, proto.EventsStream, jetstream.ConsumerConfig{
		Durable:       proto.WebhookConsumer,
		FilterSubject: proto.FinalEventSubjects,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		DeliverPolicy: jetstream.DeliverNewPolicy,
		MaxDeliver:    -1, // attempts are bounded by the deliverer
		MaxAckPending: 10000,
	})
	if err != nil {
		return nil, fmt.Errorf("open consumer %s: %w", proto.WebhookConsumer, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(max(cfg.MaxPending, 1)))
	if err != nil {
		return nil, fmt.Errorf("open consumer %s: %w", proto.WebhookConsumer, err)
	}
	return &FinalFeed{it: it}, nil
}

// ErrFeedClosed is returned by Next after Stop.
var ErrFeedClosed = errors.New("feed closed")

// Next waits for the next final event.
func (f *FinalFeed) Next() (*FeedMessage, error) {
	m, err := f.it.Next()
	if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
		return nil, ErrFeedClosed
	}
	if err != nil {
		return nil, fmt.Errorf("read final events: %w", err)
	}
	return &FeedMessage{msg: m}, nil
}

// Stop ends the feed; a blocked Next returns ErrFeedClosed.
func (f *FinalFeed) Stop() { f.it.Stop() }

// FeedMessage is one delivery of a final event.
type FeedMessage struct {
	msg jetstream.Msg
}

// Event decodes the event.
func (m *FeedMessage) Event() (*proto.Event, error) { return proto.DecodeEvent(m.msg.Data()) }

// Seq is the event's sequence in the events stream and Delivered how many
// times it was delivered (1 first).
func (m *FeedMessage) Seq() (seq uint64, delivered int) {
	md, err := m.msg.Metadata()
	if err != nil {
		return 0, 1
	}
	return md.Sequence.Stream, int(md.NumDelivered)
}

// Ack ends the delivery; Nak asks for it again after delay (0: at once).
func (m *FeedMessage) Ack() error { return m.msg.Ack() }

// Nak asks for the event again after delay (0: at once).
func (m *FeedMessage) Nak(delay time.Duration) error {
	if delay > 0 {
		return m.msg.NakWithDelay(delay)
	}
	return m.msg.Nak()
}
