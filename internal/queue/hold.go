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

// The hold (proto.HoldStream) is where an admitted job waits for its turn
// in its lane when the lane already has enough jobs ahead of its workers:
// one subject per pool, lane and tenant, so that a dispatcher can release
// the first job of any tenant (direct get by subject) in the order fair
// share chooses. A release publishes the held message on the jobs stream
// under the message id it was held with, then deletes it from the hold:
// a release repeated by a second dispatcher, or after a crash between
// the two, is a duplicate the jobs stream drops.

// LaneKey names one lane of one pool.
type LaneKey struct {
	Pool string
	Lane proto.Lane
}

// HoldJob puts an admitted job in the hold of its pool, lane and tenant;
// msgID is the message id its release publishes it with on the jobs
// stream (and its id in the hold's dedupe window).
func (c *Client) HoldJob(ctx context.Context, job *proto.Job, msgID string) error {
	_, err := c.publishJob(ctx, proto.HoldSubject(job.Pool, job.Lane, job.Tenant), job, msgID)
	return err
}

// Holds counts the held jobs of every lane by tenant.
func (c *Client) Holds(ctx context.Context) (map[LaneKey]map[string]uint64, error) {
	s, err := c.stream(ctx, proto.HoldStream)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(proto.HoldSubjects))
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", proto.HoldStream, err)
	}
	holds := map[LaneKey]map[string]uint64{}
	for subj, n := range info.State.Subjects {
		pool, lane, tenant, ok := proto.ParseHoldSubject(subj)
		if !ok || n == 0 {
			continue
		}
		k := LaneKey{pool, lane}
		if holds[k] == nil {
			holds[k] = map[string]uint64{}
		}
		holds[k][tenant] = n
	}
	return holds, nil
}

// LanesWaiting counts, for every lane with jobs, the jobs on the jobs
// stream that no worker holds yet: the jobs ahead of a job put on the
// lane now.
func (c *Client) LanesWaiting(ctx context.Context) (map[LaneKey]uint64, error) {
	s, err := c.stream(ctx, proto.JobsStream)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(proto.JobSubjects))
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", proto.JobsStream, err)
	}
	held := map[string]uint64{}
	lister := s.ListConsumers(ctx)
	for ci := range lister.Info() {
		held[ci.Config.FilterSubject] += uint64(ci.NumAckPending)
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("read consumers of %s: %w", proto.JobsStream, err)
	}
	waiting := map[LaneKey]uint64{}
	for subj, n := range info.State.Subjects {
		if p, l, ok := poolLane(subj); ok {
			waiting[LaneKey{p, l}] = n - min(held[subj], n)
		}
	}
	return waiting, nil
}

// Held is a job message in the hold.
type Held struct {
	Seq    uint64
	Pool   string
	Lane   proto.Lane
	Tenant string
	// JobID is the job's id, "" when the message does not say one.
	JobID string
	// MsgID is the message id its release publishes it with.
	MsgID string
	// Time is when it was held.
	Time time.Time
	data []byte
}

// hold is the hold stream, looked up once.
func (c *Client) hold(ctx context.Context) (jetstream.Stream, error) {
	if s := c.holdStream.Load(); s != nil {
		return *s, nil
	}
	s, err := c.stream(ctx, proto.HoldStream)
	if err != nil {
		return nil, err
	}
	c.holdStream.Store(&s)
	return s, nil
}

// FirstHeld reads the oldest held job of tenant in one lane; ErrNoMessage
// when the tenant has none there.
func (c *Client) FirstHeld(ctx context.Context, pool string, lane proto.Lane, tenant string) (*Held, error) {
	s, err := c.hold(ctx)
	if err != nil {
		return nil, err
	}
	m, err := s.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(proto.HoldSubject(pool, lane, tenant)))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, ErrNoMessage
	}
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", proto.HoldStream, err)
	}
	h := &Held{Seq: m.Sequence, Pool: pool, Lane: lane, Tenant: tenant, MsgID: m.Header.Get(proto.MsgIDHeader), Time: m.Time, data: m.Data}
	var head struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(m.Data, &head) == nil {
		h.JobID = head.ID
	}
	if h.MsgID == "" {
		h.MsgID = h.JobID
	}
	return h, nil
}

// Release moves a held job onto its lane: it publishes the message on
// the jobs stream under its message id, then deletes it from the hold. A
// release of a job another dispatcher released just before is a
// duplicate the jobs stream drops; it is not an error.
func (c *Client) Release(ctx context.Context, h *Held) error {
	subject := proto.JobSubject(h.Pool, h.Lane)
	_, err := c.js.PublishMsg(ctx, &nats.Msg{
		Subject: subject,
		Data:    h.data,
		Header:  nats.Header{proto.MsgIDHeader: []string{h.MsgID}},
	})
	if err != nil {
		return fmt.Errorf("release job %s onto %s: %w", h.JobID, subject, err)
	}
	return c.DropHeld(ctx, h)
}

// DropHeld deletes a held job from the hold (one that ended while it
// waited, or that Release put on its lane).
func (c *Client) DropHeld(ctx context.Context, h *Held) error {
	s, err := c.hold(ctx)
	if err != nil {
		return err
	}
	if err := deleteMsg(ctx, s, h.Seq); err != nil {
		return fmt.Errorf("delete held job %s (message %d of %s): %w", h.JobID, h.Seq, proto.HoldStream, err)
	}
	return nil
}
