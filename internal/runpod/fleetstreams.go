package runpod

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comfyfleet/comfyfleet/proto"
)

// fleetStreams does the two things /retry and /purge-queue need of the
// work-queue streams that internal/queue does not offer:
//
//   - re-admitting a job under its old id. Submissions and admissions are
//     de-duplicated by Nats-Msg-Id = job id, so publishing a retried job
//     through the intake again within the dedupe window would be dropped
//     (by CF_SUBMIT, or by CF_JOBS when the dispatcher admits it). A retry
//     is therefore published straight onto its pool's lane with the
//     message id "<id>.retry.<n>". The job was validated and placed at its
//     first admission, so nothing the dispatcher does is skipped.
//   - finding the jobs that wait in the queue, for purge-queue, by reading
//     the streams' messages in place (direct get by sequence), which needs
//     no consumer and does not disturb the workers' work-queue consumers.
type fleetStreams struct {
	js jetstream.JetStream

	mu      sync.Mutex
	streams map[string]jetstream.Stream
}

func newFleetStreams(js jetstream.JetStream) *fleetStreams {
	return &fleetStreams{js: js, streams: map[string]jetstream.Stream{}}
}

func (f *fleetStreams) stream(ctx context.Context, name string) (jetstream.Stream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.streams[name]; ok {
		return s, nil
	}
	s, err := f.js.Stream(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("open stream %s: %w", name, err)
	}
	f.streams[name] = s
	return s, nil
}

// readmit publishes a retried job on cf.jobs.<pool>.<lane>; n (the record's
// retries count) makes its message id unique.
func (f *fleetStreams) readmit(ctx context.Context, job *proto.Job, n int) error {
	job.V = proto.Version
	data, err := json.Marshal(job)
	if err != nil {
		return fmt.Errorf("encode job %s: %w", job.ID, err)
	}
	subject := proto.JobSubject(job.Pool, job.Lane)
	msgID := job.ID + ".retry." + strconv.Itoa(n)
	if _, err := f.js.PublishMsg(ctx, &nats.Msg{
		Subject: subject, Data: data, Header: nats.Header{proto.MsgIDHeader: []string{msgID}},
	}); err != nil {
		return fmt.Errorf("publish retried job %s on %s: %w", job.ID, subject, err)
	}
	return nil
}

// queuedMsg is one job message found waiting in a work-queue stream.
type queuedMsg struct {
	stream jetstream.Stream
	seq    uint64
	jobID  string
	source string
}

// eachQueued calls fn for every job message of the given source that is
// still in the intake stream or the jobs stream (waiting, or handed to a
// worker and not yet acknowledged), oldest first. fn returning an error
// stops the walk.
func (f *fleetStreams) eachQueued(ctx context.Context, source string, fn func(queuedMsg) error) error {
	walks := []struct{ stream, subject string }{
		{proto.SubmitStream, proto.SubmitSubject(source)},
		{proto.JobsStream, proto.JobSubjects},
	}
	for _, w := range walks {
		s, err := f.stream(ctx, w.stream)
		if err != nil {
			return err
		}
		for seq := uint64(1); ; seq++ {
			m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(w.subject))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if err != nil {
				return fmt.Errorf("read stream %s: %w", w.stream, err)
			}
			seq = m.Sequence
			var head struct {
				ID     string `json:"id"`
				Source string `json:"source"`
			}
			if json.Unmarshal(m.Data, &head) != nil || head.ID == "" {
				continue
			}
			if w.stream == proto.SubmitStream {
				head.Source = source // the subject says it
			}
			if head.Source != source {
				continue
			}
			if err := fn(queuedMsg{stream: s, seq: m.Sequence, jobID: head.ID, source: head.Source}); err != nil {
				return err
			}
		}
	}
	return nil
}
