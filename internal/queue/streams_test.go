package queue_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

func streamConfig(t *testing.T, n *testenv.NATS, name string) jetstream.StreamConfig {
	t.Helper()
	s, err := n.JS.Stream(context.Background(), name)
	require.NoError(t, err)
	info, err := s.Info(context.Background())
	require.NoError(t, err)
	return info.Config
}

// TestEnsureBoundsEventsAndDeadLetters: CF_EVENTS and CF_DLQ are bounded
// by age and bytes from queue.Config (its defaults when unset), drop
// their oldest messages first, and a later Ensure with other bounds
// updates them.
func TestEnsureBoundsEventsAndDeadLetters(t *testing.T) {
	t.Parallel()
	type bounds struct {
		maxAge   time.Duration
		maxBytes int64
	}
	tests := []struct {
		name       string
		cfg        queue.Config
		wantEvents bounds
		wantDLQ    bounds
	}{
		{
			name:       "defaults",
			cfg:        queue.Config{},
			wantEvents: bounds{queue.DefaultEventsMaxAge, queue.DefaultEventsMaxBytes},
			wantDLQ:    bounds{queue.DefaultDLQMaxAge, queue.DefaultDLQMaxBytes},
		},
		{
			name:       "set",
			cfg:        queue.Config{EventsMaxAge: 3 * time.Hour, EventsMaxBytes: 8 << 20, DLQMaxAge: 48 * time.Hour, DLQMaxBytes: 16 << 20},
			wantEvents: bounds{3 * time.Hour, 8 << 20},
			wantDLQ:    bounds{48 * time.Hour, 16 << 20},
		},
		{
			name:       "only the dead letters' age",
			cfg:        queue.Config{DLQMaxAge: 72 * time.Hour},
			wantEvents: bounds{queue.DefaultEventsMaxAge, queue.DefaultEventsMaxBytes},
			wantDLQ:    bounds{72 * time.Hour, queue.DefaultDLQMaxBytes},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// Made with the defaults first, as an older deployment was:
			// Ensure must update the streams to the new bounds.
			q, n := setup(t)
			require.NoError(t, q.Ensure(testenv.Context(t, 10*time.Second), tt.cfg))
			for _, c := range []struct {
				stream string
				want   bounds
			}{{proto.EventsStream, tt.wantEvents}, {proto.DLQStream, tt.wantDLQ}} {
				sc := streamConfig(t, n, c.stream)
				require.Equal(t, c.want.maxAge, sc.MaxAge, "%s max age", c.stream)
				require.Equal(t, c.want.maxBytes, sc.MaxBytes, "%s max bytes", c.stream)
				require.Equal(t, jetstream.DiscardOld, sc.Discard, "%s drops its oldest first", c.stream)
				require.Equal(t, jetstream.LimitsPolicy, sc.Retention, c.stream)
			}
		})
	}
}

func TestEnsureRefusesBadBounds(t *testing.T) {
	t.Parallel()
	q, _ := setup(t)
	tests := []struct {
		name    string
		cfg     queue.Config
		wantErr string
	}{
		{name: "negative events age", cfg: queue.Config{EventsMaxAge: -time.Second}, wantErr: "must not be negative"},
		{name: "negative dead-letter age", cfg: queue.Config{DLQMaxAge: -time.Second}, wantErr: "must not be negative"},
		{name: "negative events bytes", cfg: queue.Config{EventsMaxBytes: -1}, wantErr: "sizes must not be negative"},
		{name: "negative dead-letter bytes", cfg: queue.Config{DLQMaxBytes: -1}, wantErr: "sizes must not be negative"},
		{name: "too many replicas", cfg: queue.Config{Replicas: 6}, wantErr: "stream replicas 6 is not from 1 to 5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.ErrorContains(t, tt.cfg.Validate(), tt.wantErr)
			require.ErrorContains(t, q.Ensure(testenv.Context(t, 10*time.Second), tt.cfg), tt.wantErr)
		})
	}
}

// TestEventsStayWithinMaxBytes: past EventsMaxBytes the oldest events go,
// the newest stay readable.
func TestEventsStayWithinMaxBytes(t *testing.T) {
	t.Parallel()
	const maxBytes = 64 << 10
	n := testenv.StartNATS(t)
	q, err := queue.New(n.Conn)
	require.NoError(t, err)
	ctx := testenv.Context(t, 30*time.Second)
	require.NoError(t, q.Ensure(ctx, queue.Config{EventsMaxBytes: maxBytes}))
	node := strings.Repeat("n", 1024)
	const total = 200 // about three times the bound
	for i := 1; i <= total; i++ {
		require.NoError(t, q.PublishEvent(ctx, &proto.Event{JobID: "j", Type: proto.EventProgress,
			Progress: &proto.Progress{Node: node, Value: int64(i), Max: total}}))
	}
	s, err := n.JS.Stream(ctx, proto.EventsStream)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.LessOrEqual(t, info.State.Bytes, uint64(maxBytes))
	require.Less(t, info.State.Msgs, uint64(total), "the oldest events were dropped")
	require.Greater(t, info.State.FirstSeq, uint64(1))
	last, err := q.LastEvent(ctx, "j")
	require.NoError(t, err)
	require.NotNil(t, last)
	require.EqualValues(t, total, last.Progress.Value, "the newest event is kept")
}

// TestDeadLettersAgeOut: CF_DLQ drops dead letters older than DLQMaxAge,
// even one shorter than the dedupe window.
func TestDeadLettersAgeOut(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	q, err := queue.New(n.Conn)
	require.NoError(t, err)
	ctx := testenv.Context(t, 30*time.Second)
	require.NoError(t, q.Ensure(ctx, queue.Config{DLQMaxAge: time.Second}))
	require.NoError(t, q.PublishDeadLetter(ctx, "p", "j", 1, []byte(`{"id":"j"}`), "boom", []string{"attempt 1: boom"}, []string{proto.SecretComfyOrgAPIKey, proto.SecretS3AccessSecret}))
	dls, err := q.DeadLetters(ctx, "p", 0)
	require.NoError(t, err)
	require.Len(t, dls, 1)
	require.Equal(t, "j", dls[0].JobID)
	require.Equal(t, "boom", dls[0].Reason)
	require.Equal(t, []string{"attempt 1: boom"}, dls[0].Attempts)
	require.Equal(t, []string{proto.SecretComfyOrgAPIKey, proto.SecretS3AccessSecret}, dls[0].SecretsRemoved)
	dl, _, err := q.DeadLetterJob(ctx, dls[0].Seq)
	require.NoError(t, err)
	require.Equal(t, dls[0].SecretsRemoved, dl.SecretsRemoved)
	require.Eventually(t, func() bool {
		dls, err := q.DeadLetters(ctx, "p", 0)
		return err == nil && len(dls) == 0
	}, 20*time.Second, 50*time.Millisecond, "the dead letter outlived DLQMaxAge")
}

// TestPreviewStreamKeepsEachJobsLatest: previews go to CF_PREVIEWS, which
// keeps one message per job, the latest, in memory; none reaches
// CF_EVENTS.
func TestPreviewStreamKeepsEachJobsLatest(t *testing.T) {
	t.Parallel()
	q, n := setup(t)
	ctx := testenv.Context(t, 10*time.Second)
	sc := streamConfig(t, n, proto.PreviewStream)
	require.EqualValues(t, 1, sc.MaxMsgsPerSubject)
	require.Equal(t, jetstream.MemoryStorage, sc.Storage)
	require.Equal(t, []string{proto.PreviewSubjects}, sc.Subjects)

	for _, p := range []struct{ job, node string }{{"j1", "a"}, {"j1", "b"}, {"j2", "x"}, {"j1", "c"}} {
		require.NoError(t, q.PublishEvent(ctx, &proto.Event{JobID: p.job, Type: proto.EventPreview,
			Preview: &proto.Preview{Node: p.node, Mime: "image/jpeg", Data: "AAAA"}}))
	}
	s, err := n.JS.Stream(ctx, proto.PreviewStream)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 2, info.State.Msgs, "one preview per job")
	for job, want := range map[string]string{"j1": "c", "j2": "x"} {
		m, err := s.GetLastMsgForSubject(ctx, proto.PreviewSubject(job, ""))
		require.NoError(t, err)
		ev, err := proto.DecodeEvent(m.Data)
		require.NoError(t, err)
		require.Equal(t, want, ev.Preview.Node, "the latest preview of %s", job)
	}
	for _, job := range []string{"j1", "j2"} {
		evs, _, err := q.ReadEvents(ctx, job, 0, 10)
		require.NoError(t, err)
		require.Empty(t, evs, "previews are not job events")
	}
}

// TestStatusEventIsStoredAmidLargePreviews: a status event is stored while
// the same job's large previews pour out without waiting, and stays
// stored afterwards, in a CF_EVENTS bounded to about one preview's size:
// the previews go to their own stream, so they neither take its place
// nor wait in front of it.
func TestStatusEventIsStoredAmidLargePreviews(t *testing.T) {
	t.Parallel()
	const eventsMaxBytes = 1 << 20
	n := testenv.StartNATS(t)
	q, err := queue.New(n.Conn)
	require.NoError(t, err)
	ctx := testenv.Context(t, 60*time.Second)
	require.NoError(t, q.Ensure(ctx, queue.Config{EventsMaxBytes: eventsMaxBytes}))
	// A picker on another connection, as a worker is on another process.
	nc, _ := n.Connect(t)
	pq, err := queue.New(nc)
	require.NoError(t, err)

	picture := strings.Repeat("A", 850<<10) // previews of ~850 KB, as ComfyUI's
	preview := func(i int) *proto.Event {
		return &proto.Event{JobID: "j", Type: proto.EventPreview, Preview: &proto.Preview{Node: fmt.Sprint(i), Mime: "image/png", Data: picture}}
	}
	const before, after = 20, 20
	sent := make(chan int, before+after)
	flood := func(from, to int) error {
		for i := from; i < to; i++ {
			if err := pq.PublishEventNoWait(preview(i)); err != nil {
				return err
			}
			sent <- i
		}
		return nil
	}
	errc := make(chan error, 1)
	go func() { errc <- flood(0, before) }()
	for range before / 2 {
		<-sent // the flood is under way
	}
	start := time.Now()
	require.NoError(t, q.PublishEvent(ctx, &proto.Event{JobID: "j", Type: proto.EventStatus, Status: proto.StatusInProgress, Attempt: 1}))
	took := time.Since(start)
	require.NoError(t, <-errc)
	require.NoError(t, flood(before, before+after), "previews go on after the status event")
	require.NoError(t, pq.Flush(ctx))

	evs, _, err := q.ReadEvents(ctx, "j", 0, 100)
	require.NoError(t, err)
	require.Len(t, evs, 1, "the status event is stored, and no preview beside it")
	require.Equal(t, proto.EventStatus, evs[0].Type)
	require.Equal(t, proto.StatusInProgress, evs[0].Status)
	require.Less(t, took, 10*time.Second, "the status event waited for the previews")

	s, err := n.JS.Stream(ctx, proto.PreviewStream)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		m, err := s.GetLastMsgForSubject(ctx, proto.PreviewSubject("j", ""))
		if err != nil {
			return false
		}
		ev, err := proto.DecodeEvent(m.Data)
		return err == nil && ev.Preview != nil && ev.Preview.Node == fmt.Sprint(before+after-1)
	}, 20*time.Second, 20*time.Millisecond, "the latest preview reaches CF_PREVIEWS")
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, info.State.Msgs, "CF_PREVIEWS keeps the job's latest only")
}

// TestEnsureMovesAFleetToTenantSubjects: streams and consumers made before
// tenants (cf.submit.*, cf.events.*.*, cf.previews.*) take the new
// subjects at the next Ensure, and a job queued before still reaches the
// intake consumer.
func TestEnsureMovesAFleetToTenantSubjects(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	ctx := testenv.Context(t, 30*time.Second)
	for name, subject := range map[string]string{proto.SubmitStream: "cf.submit.*", proto.EventsStream: "cf.events.*.*", proto.PreviewStream: "cf.previews.*"} {
		sc := jetstream.StreamConfig{Name: name, Subjects: []string{subject}, Storage: jetstream.MemoryStorage}
		if name == proto.SubmitStream {
			sc.Retention = jetstream.WorkQueuePolicy
		}
		_, err := n.JS.CreateStream(ctx, sc)
		require.NoError(t, err)
	}
	_, err := n.JS.CreateOrUpdateConsumer(ctx, proto.SubmitStream, jetstream.ConsumerConfig{Durable: proto.IntakeConsumer, FilterSubject: "cf.submit.*", AckPolicy: jetstream.AckExplicitPolicy})
	require.NoError(t, err)
	_, err = n.JS.CreateOrUpdateConsumer(ctx, proto.EventsStream, jetstream.ConsumerConfig{Durable: proto.WebhookConsumer, FilterSubject: "cf.events.*.final", AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverNewPolicy, MaxDeliver: -1})
	require.NoError(t, err)
	_, err = n.JS.Publish(ctx, "cf.submit.batch", []byte(`{"id":"old-job","input":{"workflow":{}}}`))
	require.NoError(t, err)

	q, err := queue.New(n.Conn)
	require.NoError(t, err)
	require.NoError(t, q.Ensure(ctx, queue.Config{MemoryStorage: true}))
	require.Equal(t, []string{proto.SubmitSubjects}, streamConfig(t, n, proto.SubmitStream).Subjects)
	require.Equal(t, []string{proto.EventSubjects}, streamConfig(t, n, proto.EventsStream).Subjects)
	require.Equal(t, []string{proto.PreviewSubjects}, streamConfig(t, n, proto.PreviewStream).Subjects)

	intake, err := q.IntakeConsumer(ctx, queue.ConsumerConfig{})
	require.NoError(t, err)
	msg, err := intake.Next(ctx, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, "cf.submit.batch", msg.Subject(), "the job queued before the move")
	feed, err := q.OpenFinalFeed(ctx, queue.FinalFeedConfig{AckWait: time.Second})
	require.NoError(t, err)
	feed.Stop()
	c, err := n.JS.Consumer(ctx, proto.EventsStream, proto.WebhookConsumer)
	require.NoError(t, err)
	require.Equal(t, proto.FinalEventSubjects, c.CachedInfo().Config.FilterSubject)
}

// TestLatestPreviewAndItsWake: LatestPreview reads a job's latest preview
// with its sequence (nil for a job with none), and WakeOnEvents wakes on a
// preview, so a held /stream call hands it out.
func TestLatestPreviewAndItsWake(t *testing.T) {
	t.Parallel()
	q, _ := setup(t)
	ctx := testenv.Context(t, 10*time.Second)
	none, err := q.LatestPreview(ctx, "pv-1")
	require.NoError(t, err)
	require.Nil(t, none)

	wake, err := q.WakeOnEvents("pv-1")
	require.NoError(t, err)
	defer wake.Stop()
	for _, node := range []string{"a", "b"} {
		require.NoError(t, q.PublishEvent(ctx, &proto.Event{JobID: "pv-1", Tenant: "acme", Type: proto.EventPreview,
			Preview: &proto.Preview{Node: node, Mime: "image/jpeg", Data: "AAAA"}}))
	}
	require.NoError(t, wake.Wait(ctx), "a preview wakes the job's waiters")
	got, err := q.LatestPreview(ctx, "pv-1")
	require.NoError(t, err)
	require.NotNil(t, got)
	require.Equal(t, "b", got.Preview.Node, "the latest")
	require.Positive(t, got.Seq)
	other, err := q.LatestPreview(ctx, "pv-2")
	require.NoError(t, err)
	require.Nil(t, other, "another job's previews are not this one's")
}
