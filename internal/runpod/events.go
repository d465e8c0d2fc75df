package runpod

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Chunk is what the event contributes to RunPod's /stream and to the
// output of an IN_PROGRESS job: a worker's chunk or progress value as
// posted, or for a gpuworker's progress event worker-comfyui's progress
// shape {"type":"progress","node","value","max","percent"}. ok is false
// for events that carry none (status transitions).
func Chunk(e *proto.Event) (chunk json.RawMessage, ok bool) {
	switch e.Type {
	case proto.EventStream, proto.EventProgressUpdate:
		if len(e.Output) == 0 {
			return json.RawMessage("null"), true
		}
		return e.Output, true
	case proto.EventProgress:
		if e.Progress == nil {
			return nil, false
		}
		data, err := json.Marshal(struct {
			Type string `json:"type"`
			*proto.Progress
		}{"progress", e.Progress})
		if err != nil {
			return nil, false
		}
		return data, true
	}
	return nil, false
}

// LoggedEvent is an event with its sequence number in the events stream.
type LoggedEvent struct {
	Seq uint64
	proto.Event
}

// EventLog reads and appends job events in proto.EventsStream. It reads
// by sequence number with the stream's direct get, so it needs no consumer
// and keeps no state: any adapter replica reads the same log.
type EventLog struct {
	js jetstream.JetStream

	mu     sync.Mutex
	stream jetstream.Stream
}

// NewEventLog returns an event log on js.
func NewEventLog(js jetstream.JetStream) *EventLog { return &EventLog{js: js} }

func (l *EventLog) events(ctx context.Context) (jetstream.Stream, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stream != nil {
		return l.stream, nil
	}
	s, err := l.js.Stream(ctx, proto.EventsStream)
	if err != nil {
		return nil, fmt.Errorf("open stream %s: %w", proto.EventsStream, err)
	}
	l.stream = s
	return s, nil
}

// Publish appends an event to its job's subject and waits for the stream
// to store it.
func (l *EventLog) Publish(ctx context.Context, ev *proto.Event) error {
	ev.V = proto.Version
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode %s event for %s: %w", ev.Type, ev.JobID, err)
	}
	if _, err := l.js.Publish(ctx, proto.EventSubject(ev.JobID), data); err != nil {
		return fmt.Errorf("publish %s event for %s: %w", ev.Type, ev.JobID, err)
	}
	return nil
}

// Read returns up to max events of the job stored after sequence after,
// oldest first, and the sequence of the last one it looked at (after when
// there is none). Events that cannot be decoded are skipped but counted in
// last, so a reader never stalls on them.
func (l *EventLog) Read(ctx context.Context, jobID string, after uint64, max int) (evs []LoggedEvent, last uint64, err error) {
	s, err := l.events(ctx)
	if err != nil {
		return nil, after, err
	}
	last = after
	subject := proto.EventSubject(jobID)
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

// Last returns the job's latest event, or nil when it has none.
func (l *EventLog) Last(ctx context.Context, jobID string) (*LoggedEvent, error) {
	s, err := l.events(ctx)
	if err != nil {
		return nil, err
	}
	m, err := s.GetLastMsgForSubject(ctx, proto.EventSubject(jobID))
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
