package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comfyfleet/comfyfleet/proto"
)

// ErrNoMessage is returned by Consumer.Next when no message arrived in time.
var ErrNoMessage = errors.New("no message")

// Message is one delivery from a work queue. Exactly one of Ack, Nak or
// Term must be called, or the message is redelivered after AckWait.
type Message struct {
	msg jetstream.Msg
	// batchTurn: Lanes.Next took it from a batch lane on a turn that gave
	// the batch lanes the first look (BatchEvery).
	batchTurn bool
}

// BatchTurn reports whether Lanes.Next took the message from a batch lane
// on a BatchEvery turn, when the batch lanes had the first look: the one
// batch job in BatchEvery that moves whatever interactive work waits.
func (m *Message) BatchTurn() bool { return m.batchTurn }

// Data is the message body.
func (m *Message) Data() []byte { return m.msg.Data() }

// Subject is the subject the message was published on.
func (m *Message) Subject() string { return m.msg.Subject() }

// Seq is the message's sequence in its stream: it names the message, the
// same at every redelivery.
func (m *Message) Seq() uint64 {
	md, err := m.msg.Metadata()
	if err != nil {
		return 0
	}
	return md.Sequence.Stream
}

// Age is how long ago the stream stored the message (its first
// delivery's wait included); 0 when its metadata does not say.
func (m *Message) Age() time.Duration {
	md, err := m.msg.Metadata()
	if err != nil {
		return 0
	}
	return max(time.Since(md.Timestamp), 0)
}

// Delivered is how many times this message has been delivered, 1 first.
func (m *Message) Delivered() int {
	md, err := m.msg.Metadata()
	if err != nil {
		return 1
	}
	return int(md.NumDelivered)
}

// Ack removes the message from the work queue and waits for the server's
// confirmation, so a crash after Ack returns never redelivers it.
func (m *Message) Ack(ctx context.Context) error { return m.msg.DoubleAck(ctx) }

// Nak asks for redelivery after delay (0: at once).
func (m *Message) Nak(delay time.Duration) error {
	if delay > 0 {
		return m.msg.NakWithDelay(delay)
	}
	return m.msg.Nak()
}

// InProgress resets the AckWait timer: the message is being worked on.
func (m *Message) InProgress() error { return m.msg.InProgress() }

// Term removes the message without redelivery.
func (m *Message) Term() error { return m.msg.Term() }

// Consumer is a durable pull consumer shared by every process that opens it
// with the same name.
type Consumer struct {
	c     jetstream.Consumer
	batch bool // a batch lane's, in Lanes
	// pool and lane are a lane consumer's, in Lanes.
	pool string
	lane proto.Lane
}

// ConsumerConfig names a durable consumer and its timing.
type ConsumerConfig struct {
	// Durable is the name shared by all replicas.
	Durable string
	// AckWait is how long a delivery may go without Ack or InProgress
	// before it is redelivered; 0 means 30 s.
	AckWait time.Duration
	// MaxAckPending bounds unacknowledged deliveries; 0 means 10,000.
	MaxAckPending int
}

// IntakeConsumer opens the dispatchers' shared consumer of CF_SUBMIT.
func (c *Client) IntakeConsumer(ctx context.Context, cfg ConsumerConfig) (*Consumer, error) {
	if cfg.Durable == "" {
		cfg.Durable = proto.IntakeConsumer
	}
	return c.consumer(ctx, proto.SubmitStream, proto.SubmitSubjects, cfg)
}

// LaneConsumer opens the workers' shared consumer of one lane of a pool.
// A work-queue stream allows one consumer per subject, so every worker of
// the pool shares it.
func (c *Client) LaneConsumer(ctx context.Context, pool string, lane proto.Lane, cfg ConsumerConfig) (*Consumer, error) {
	if cfg.Durable == "" {
		cfg.Durable = proto.LaneConsumer(pool, lane)
	}
	return c.consumer(ctx, proto.JobsStream, proto.JobSubject(pool, lane), cfg)
}

// EnsureLaneConsumers creates the lane consumers of pool that do not
// exist yet, and the consumer that counts its held jobs
// (proto.HoldConsumer), with the defaults of ConsumerConfig; an existing one is left
// as its workers configured it. An autoscaler that reads a consumer's
// backlog (KEDA's NATS JetStream scaler) needs it to exist before the
// pool's first worker starts: scaled to zero, a pool has no worker to
// create it.
func (c *Client) EnsureLaneConsumers(ctx context.Context, pool string) error {
	for _, lane := range []proto.Lane{proto.LaneInteractive, proto.LaneBatch} {
		name := proto.LaneConsumer(pool, lane)
		_, err := c.js.Consumer(ctx, proto.JobsStream, name)
		if err == nil {
			continue
		}
		if !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("look up consumer %s on %s: %w", name, proto.JobsStream, err)
		}
		_, err = c.js.CreateConsumer(ctx, proto.JobsStream, consumerConfig(proto.JobSubject(pool, lane), ConsumerConfig{Durable: name}))
		if err != nil && !errors.Is(err, jetstream.ErrConsumerExists) {
			return fmt.Errorf("create consumer %s on %s: %w", name, proto.JobsStream, err)
		}
	}
	// The pool's held jobs, for the autoscaler alone: nobody pulls it.
	name := proto.HoldConsumer(pool)
	_, err := c.js.CreateConsumer(ctx, proto.HoldStream, jetstream.ConsumerConfig{
		Durable:       name,
		Description:   "the pool's held jobs, counted for autoscaling; never pulled",
		FilterSubject: proto.PoolHoldSubjects(pool),
		AckPolicy:     jetstream.AckExplicitPolicy,
	})
	if err != nil && !errors.Is(err, jetstream.ErrConsumerExists) {
		return fmt.Errorf("create consumer %s on %s: %w", name, proto.HoldStream, err)
	}
	return nil
}

// consumerConfig is the JetStream configuration of a consumer of filter.
func consumerConfig(filter string, cfg ConsumerConfig) jetstream.ConsumerConfig {
	if cfg.AckWait == 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.MaxAckPending == 0 {
		cfg.MaxAckPending = 10000
	}
	return jetstream.ConsumerConfig{
		Durable:       cfg.Durable,
		FilterSubject: filter,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxAckPending: cfg.MaxAckPending,
		MaxDeliver:    -1, // attempts are counted and bounded by us, in Redis
	}
}

func (c *Client) consumer(ctx context.Context, stream, filter string, cfg ConsumerConfig) (*Consumer, error) {
	cons, err := c.js.CreateOrUpdateConsumer(ctx, stream, consumerConfig(filter, cfg))
	if err != nil {
		return nil, fmt.Errorf("open consumer %s on %s: %w", cfg.Durable, stream, err)
	}
	return &Consumer{c: cons}, nil
}

// Next waits up to wait for one message. It returns ErrNoMessage when none
// came and ctx.Err() when ctx ended.
//
// The pull request expires on the server after wait, and Next reads until
// the server says so, whatever ctx does meanwhile: a fetch given up on the
// client's side (a deadline or a cancel) drops a message the server sent
// as it ended, and that message then waits out AckWait before anyone gets
// it. So ctx is looked at once the fetch is over, and a message that came
// as it ended is given back.
//
// A wait of 0 or less looks once, without waiting (nats.go refuses such a
// wait as an invalid option, which a caller whose time ran out would log
// as a failure on every turn of its loop).
func (c *Consumer) Next(ctx context.Context, wait time.Duration) (*Message, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if wait <= 0 {
		return c.TryNext(ctx)
	}
	msg, err := c.c.Next(jetstream.FetchMaxWait(wait))
	switch {
	case err == nil && ctx.Err() != nil:
		_ = msg.Nak()
		return nil, ctx.Err()
	case err == nil:
		return &Message{msg: msg}, nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded), errors.Is(err, jetstream.ErrNoMessages):
		return nil, ErrNoMessage
	}
	return nil, fmt.Errorf("fetch: %w", err)
}

// Fetch asks for up to max messages, waiting up to wait for them, and
// hands each to fn as it arrives (fn must not block for long: the pull
// stays open behind it). It returns how many came; none in time is not an
// error. Like Next, it reads until the server ends the pull, whatever ctx
// does meanwhile, and gives back (NAKs) a message that came after ctx
// ended rather than handing it to fn; then it returns ctx.Err().
//
// A wait of 0 or less takes only what waits now.
func (c *Consumer) Fetch(ctx context.Context, max int, wait time.Duration, fn func(*Message)) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var batch jetstream.MessageBatch
	var err error
	if wait <= 0 {
		batch, err = c.c.FetchNoWait(max)
	} else {
		batch, err = c.c.Fetch(max, jetstream.FetchMaxWait(wait))
	}
	if err != nil {
		return 0, fmt.Errorf("fetch: %w", err)
	}
	n := 0
	for msg := range batch.Messages() {
		if ctx.Err() != nil {
			_ = msg.Nak()
			continue
		}
		n++
		fn(&Message{msg: msg})
	}
	if err := ctx.Err(); err != nil {
		return n, err
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) &&
		!errors.Is(err, context.DeadlineExceeded) {
		return n, fmt.Errorf("fetch: %w", err)
	}
	return n, nil
}

// TryNext returns a message that is waiting now, or ErrNoMessage at once.
func (c *Consumer) TryNext(ctx context.Context) (*Message, error) {
	batch, err := c.c.FetchNoWait(1)
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	for msg := range batch.Messages() {
		// Drain the batch; it holds at most one message.
		return &Message{msg: msg}, nil
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("fetch: %w", err)
	}
	return nil, ErrNoMessage
}

// Pending is the number of messages waiting for this consumer.
func (c *Consumer) Pending(ctx context.Context) (uint64, error) {
	info, err := c.c.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("consumer info: %w", err)
	}
	return info.NumPending, nil
}

// Reply is the delivery's ack subject. Another process can settle the
// delivery with it (Client.Ack, Nak, InProgress, Term), e.g. hand back the
// job of a worker that died.
func (m *Message) Reply() string { return m.msg.Reply() }
