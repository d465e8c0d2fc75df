package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/proto"
)

// bus is a batch producer's connection to the fleet's NATS, used as
// docs/batch.md tells any producer to: publish on cf.submit.batch through
// JetStream with Nats-Msg-Id, follow cf.events.<id>.*.
type bus struct {
	nc *nats.Conn
	js jetstream.JetStream
}

// maxPendingAcks bounds the publishes in flight without a PubAck.
const maxPendingAcks = 256

// stallWait is how long a publish waits for room among the pending acks:
// a stack whose CPU is saturated acknowledges late, and that is not an error.
const stallWait = 30 * time.Second

func dialBus(ctx context.Context, url string, auth backend.NATSAuth) (*bus, error) {
	nc, err := backend.ConnectNATS(ctx, "comfyfleet-bench", url, auth)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(maxPendingAcks))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return &bus{nc: nc, js: js}, nil
}

func (b *bus) close() { b.nc.Close() }

// batchJob is one encoded submission.
type batchJob struct {
	ID   string
	Data []byte
}

// newBatchJob encodes a batch-lane job of the given RunPod input.
func newBatchJob(id string, input []byte) (batchJob, error) {
	data, err := json.Marshal(proto.Job{V: proto.Version, ID: id, Input: input, Lane: proto.LaneBatch})
	if err != nil {
		return batchJob{}, fmt.Errorf("encode job %s: %w", id, err)
	}
	return batchJob{ID: id, Data: data}, nil
}

// batchJobs encodes n batch jobs of the run's workflow, named
// bench-<run>-<kind><i>, each with its own seed from *seed on.
func (r *runner) batchJobs(kind string, n int, seed *uint64) ([]batchJob, error) {
	jobs := make([]batchJob, n)
	for i := range jobs {
		j, err := newBatchJob(fmt.Sprintf("bench-%s-%s%06d", r.runID, kind, i), runInput(workflow(r.cfg.Size, *seed)))
		if err != nil {
			return nil, err
		}
		jobs[i] = j
		*seed++
	}
	return jobs, nil
}

// submit publishes the jobs on cf.submit.batch, up to maxPendingAcks at a
// time, and returns once JetStream acknowledged every one.
func (b *bus) submit(ctx context.Context, jobs []batchJob) error { return b.submitAs(ctx, "", jobs) }

// submitAs is submit as tenant (cf.submit.batch.<tenant>; "" for none), as
// a producer whose NATS user may publish only there does.
func (b *bus) submitAs(ctx context.Context, tenant string, jobs []batchJob) error {
	subject := proto.SubmitSubject(proto.SourceBatch, tenant)
	futures := make([]jetstream.PubAckFuture, 0, len(jobs))
	for _, j := range jobs {
		f, err := b.js.PublishMsgAsync(&nats.Msg{Subject: subject, Data: j.Data,
			Header: nats.Header{proto.MsgIDHeader: []string{j.ID}}}, jetstream.WithStallWait(stallWait))
		if err != nil {
			return fmt.Errorf("publish job %s: %w", j.ID, err)
		}
		futures = append(futures, f)
	}
	select {
	case <-b.js.PublishAsyncComplete():
	case <-ctx.Done():
		return fmt.Errorf("wait for the PubAcks: %w", ctx.Err())
	}
	for _, f := range futures {
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				return fmt.Errorf("publish job %s: JetStream dropped it as a duplicate", f.Msg().Header.Get(proto.MsgIDHeader))
			}
		case err := <-f.Err():
			return fmt.Errorf("publish job %s: %w", f.Msg().Header.Get(proto.MsgIDHeader), err)
		}
	}
	return nil
}
