package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comfyfleet/comfyfleet/proto"
)

// ErrNoDeadLetter: no dead letter has that sequence number (never, it was
// replayed, or it aged out).
var ErrNoDeadLetter = errors.New("no such dead letter")

// DeadLetter is a job on the dead-letter stream (CF_DLQ).
type DeadLetter struct {
	// Seq is its sequence number in CF_DLQ, which a replay names.
	Seq   uint64 `json:"seq"`
	Pool  string `json:"pool"`
	JobID string `json:"job_id"`
	// Reason is the last attempt's error.
	Reason string `json:"reason"`
	// Attempts is every failed attempt's error, oldest first.
	Attempts []string `json:"attempts,omitempty"`
	// SecretsRemoved names the secrets taken out of the job message
	// (proto.StripSecrets): a replay gives them again or runs with the
	// worker's own settings.
	SecretsRemoved []string  `json:"secrets_removed,omitempty"`
	Time           time.Time `json:"time"`
}

// PublishDeadLetter puts a job message that used up its attempts on its
// pool's dead-letter subject with its last error, every attempt's and the
// names of the secrets taken out of it (the caller strips them), and
// waits for the stream to store it. The message id names the job and the
// attempt that ended it, so publishing it again (a retry after a lost
// reply) stores it once.
func (c *Client) PublishDeadLetter(ctx context.Context, pool, jobID string, attempt int, job []byte, reason string, attempts, secretsRemoved []string) error {
	m := &nats.Msg{Subject: proto.DLQSubject(pool), Data: job, Header: nats.Header{}}
	m.Header.Set(proto.MsgIDHeader, jobID+".dlq."+strconv.Itoa(attempt))
	m.Header.Set(proto.DLQReasonHeader, oneLine(reason))
	if data, err := json.Marshal(attempts); err == nil {
		m.Header.Set(proto.DLQAttemptsHeader, string(data))
	}
	if len(secretsRemoved) > 0 {
		m.Header.Set(proto.DLQSecretsRemovedHeader, strings.Join(secretsRemoved, ","))
	}
	if _, err := c.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("publish dead letter of %s: %w", jobID, err)
	}
	return nil
}

func (c *Client) dlq(ctx context.Context) (jetstream.Stream, error) {
	s, err := c.js.Stream(ctx, proto.DLQStream)
	if err != nil {
		return nil, fmt.Errorf("open stream %s: %w", proto.DLQStream, err)
	}
	return s, nil
}

// DeadLetters returns up to limit dead letters (0: 100), oldest first, of
// one pool or ("") of all.
func (c *Client) DeadLetters(ctx context.Context, pool string, limit int) ([]DeadLetter, error) {
	if limit <= 0 {
		limit = 100
	}
	s, err := c.dlq(ctx)
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

// DeadLetterJob reads one dead letter and its job message.
func (c *Client) DeadLetterJob(ctx context.Context, seq uint64) (*DeadLetter, []byte, error) {
	s, err := c.dlq(ctx)
	if err != nil {
		return nil, nil, err
	}
	raw, err := s.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil, fmt.Errorf("dead letter %d: %w", seq, ErrNoDeadLetter)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read dead letter %d: %w", seq, err)
	}
	if !strings.HasPrefix(raw.Subject, proto.DLQSubject("")) {
		return nil, nil, fmt.Errorf("dead letter %d: %w", seq, ErrNoDeadLetter)
	}
	dl := decodeDeadLetter(raw)
	return &dl, raw.Data, nil
}

// DeleteDeadLetter removes a dead letter; a missing one is not an error.
func (c *Client) DeleteDeadLetter(ctx context.Context, seq uint64) error {
	s, err := c.dlq(ctx)
	if err != nil {
		return err
	}
	if err := deleteMsg(ctx, s, seq); err != nil {
		return fmt.Errorf("remove dead letter %d: %w", seq, err)
	}
	return nil
}

func decodeDeadLetter(raw *jetstream.RawStreamMsg) DeadLetter {
	dl := DeadLetter{Seq: raw.Sequence, Pool: strings.TrimPrefix(raw.Subject, proto.DLQSubject("")), Time: raw.Time}
	if job, _ := proto.DecodeJob(raw.Data); job != nil {
		dl.JobID = job.ID
	}
	if raw.Header != nil {
		dl.Reason = raw.Header.Get(proto.DLQReasonHeader)
		_ = json.Unmarshal([]byte(raw.Header.Get(proto.DLQAttemptsHeader)), &dl.Attempts)
		if v := raw.Header.Get(proto.DLQSecretsRemovedHeader); v != "" {
			dl.SecretsRemoved = strings.Split(v, ",")
		}
	}
	return dl
}

// oneLine is s as a header value can hold it: ComfyUI's messages run over
// several lines, and a line break would end the header.
func oneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return strings.Join(strings.Fields(s), " ")
}
