package lifecycle_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// The secrets of a job live as long as the job: its request copy is kept
// from submission until its record's retention ends, whichever way it
// ends, and its dead letter never holds them.

const (
	comfyKey  = "ck-9f2e-secret"
	s3Secret  = "s3-7d1a-secret"
	s3ID      = "AKID-4c0b"
	bigSeedWF = `{"3":{"class_type":"KSampler","inputs":{"seed":18446744073709551615,"cfg":7.00000000000000000001}},"9":{"class_type":"SaveImage","inputs":{}}}`
)

// apiJob is a job of the endpoint API with both secrets, kept for
// retention after it ends, placed as the API places it.
func apiJob(id string, retention time.Duration) *proto.Job {
	j := &proto.Job{ID: id, Source: proto.SourceAPI, Retention: retention.Milliseconds(),
		Input: json.RawMessage(`{"workflow":` + bigSeedWF + `,"comfy_org_api_key":"` + comfyKey + `"}`),
		S3Config: &proto.S3Config{AccessID: s3ID, AccessSecret: s3Secret, BucketName: "outputs",
			EndpointURL: "https://s3.example.com", ObjectPath: "p"}}
	j.Place(proto.DefaultPool, time.Now())
	return j
}

// submitAPI submits as the endpoint API does (recorded at once) and
// admits the job.
func (b *bundle) submitAPI(t *testing.T, j *proto.Job) lifecycle.Admitted {
	t.Helper()
	require.NoError(t, b.core.Submit(b.ctx, proto.SourceAPI, j, true))
	return b.admitNext(t)
}

func (b *bundle) kept(t *testing.T, id string) bool {
	t.Helper()
	_, err := b.q.KeptRequest(b.ctx, id)
	if errors.Is(err, queue.ErrNotKept) {
		return false
	}
	require.NoError(t, err)
	return true
}

// keptTTL is the TTL the kept copy of id was put with, in seconds.
func (b *bundle) keptTTL(t *testing.T, id string) int {
	t.Helper()
	s, err := b.nats.JS.Stream(b.ctx, "KV_"+proto.RequestBucket)
	require.NoError(t, err)
	m, err := s.GetLastMsgForSubject(b.ctx, proto.RequestSubject(id))
	require.NoError(t, err)
	v := m.Header.Get(jetstream.MsgTTLHeader)
	d, err := time.ParseDuration(v)
	require.NoError(t, err, "Nats-TTL %q", v)
	return int(d / time.Second)
}

// sweepUntilGone sweeps, as every dispatcher does each second, until the
// job's record is gone and its request copy with it.
func (b *bundle) sweepUntilGone(t *testing.T, sw *lifecycle.Sweeper, id string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		require.NoError(t, sw.RunOnce(b.ctx))
		_, err := b.db.Get(b.ctx, id)
		recordGone := errors.Is(err, rdb.ErrNotFound)
		if !b.kept(t, id) {
			require.True(t, recordGone, "the copy of %s went while its record could still be retried", id)
			return
		}
		require.True(t, time.Now().Before(deadline), "the copy of %s outlived its record (record gone: %v)", id, recordGone)
		select {
		case <-b.ctx.Done():
			t.Fatal(b.ctx.Err())
		case <-time.After(20 * time.Millisecond): // the next sweep
		}
	}
}

// TestRequestCopyLivesAsLongAsTheJob: the copy is there from submission,
// through the job's end, while its record can be read and retried, and is
// gone once the retention ends, whichever way the job ended.
func TestRequestCopyLivesAsLongAsTheJob(t *testing.T) {
	t.Parallel()
	const retention = 300 * time.Millisecond
	ends := map[string]func(t *testing.T, b *bundle, id string){
		"completed": func(t *testing.T, b *bundle, id string) {
			cl := b.claim(t, "w1", time.Minute)
			require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusCompleted, Output: json.RawMessage(`{"images":[]}`)}))
		},
		"failed and dead-lettered": func(t *testing.T, b *bundle, id string) {
			cl := b.claim(t, "w1", time.Minute)
			require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusFailed, Error: "boom", DeadLetter: true}))
		},
		"cancelled": func(t *testing.T, b *bundle, id string) {
			_, err := b.core.Cancel(b.ctx, id)
			require.NoError(t, err)
		},
		"expired in the queue": func(t *testing.T, b *bundle, id string) {
			msg, j := b.next(t)
			require.Eventually(t, func() bool {
				return time.Now().After(j.SubmittedAt.Add(time.Duration(j.Policy.TTL) * time.Millisecond))
			},
				10*time.Second, 5*time.Millisecond)
			_, err := b.core.Claim(b.ctx, msg, j, lifecycle.Holder{WorkerID: "w1", LeaseTTL: time.Minute})
			require.ErrorIs(t, err, lifecycle.ErrEnded)
		},
	}
	for name, end := range ends {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			sw, err := b.core.NewSweeper(lifecycle.SweeperConfig{})
			require.NoError(t, err)
			j := apiJob("j", retention)
			if name == "expired in the queue" {
				j.Policy.TTL = 50
			}
			require.Equal(t, lifecycle.Queued, b.submitAPI(t, j))
			require.True(t, b.kept(t, "j"), "kept from submission")
			require.NoError(t, sw.RunOnce(b.ctx))
			require.True(t, b.kept(t, "j"), "a sweep leaves a live job's copy")
			end(t, b, "j")
			rec := b.record(t, "j")
			require.True(t, rec.Status.Terminal())
			require.True(t, b.kept(t, "j"), "kept while the ended job can be retried")
			b.sweepUntilGone(t, sw, "j")
		})
	}
}

// TestRequestCopyOfAJobFailedAtAdmission goes with its record too.
func TestRequestCopyOfAJobFailedAtAdmission(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sw, err := b.core.NewSweeper(lifecycle.SweeperConfig{})
	require.NoError(t, err)
	require.NoError(t, b.core.Submit(b.ctx, proto.SourceAPI, apiJob("j", 200*time.Millisecond), true))
	msg, err := b.intake.Next(b.ctx, 5*time.Second)
	require.NoError(t, err)
	out, _, err := b.core.Admit(b.ctx, msg, lifecycle.AdmitOptions{DefaultPool: proto.DefaultPool,
		Check: func(context.Context, *proto.Job, *proto.Input) (string, error) {
			return "no worker has this model", nil
		}})
	require.NoError(t, err)
	require.Equal(t, lifecycle.Failed, out)
	b.sweepUntilGone(t, sw, "j")
}

// TestRequestCopyOfAJobNotQueued: a submission that NATS did not take
// (here the intake stream is gone) leaves no copy of its secrets behind.
func TestRequestCopyOfAJobNotQueued(t *testing.T) {
	t.Parallel()
	b := setup(t)
	require.NoError(t, b.nats.JS.DeleteStream(b.ctx, proto.SubmitStream))
	ctx, cancel := context.WithTimeout(b.ctx, 3*time.Second)
	defer cancel()
	require.Error(t, b.core.Submit(ctx, proto.SourceAPI, apiJob("lost", time.Minute), true))
	require.False(t, b.kept(t, "lost"), "the copy of a job that was never queued")
}

// TestRequestCopyTTL: the copy is put with the longest the job may live
// (its TTL, its execution timeout and its retention), rounded up to whole
// seconds; a batch job has none.
func TestRequestCopyTTL(t *testing.T) {
	t.Parallel()
	b := setup(t)
	j := apiJob("j", 1500*time.Millisecond)
	j.Policy = proto.Policy{TTL: 60_000, ExecutionTimeout: 10_000}
	b.submitAPI(t, j)
	require.Equal(t, 72, b.keptTTL(t, "j"), "60 s + 10 s + 1.5 s, rounded up")

	d := apiJob("defaults", 0)
	b.submitAPI(t, d)
	require.Equal(t, int((rdb.DefaultTTL+rdb.DefaultRetention)/time.Second), b.keptTTL(t, "defaults"))

	batch := apiJob("batch", 0)
	batch.Source = proto.SourceBatch
	require.NoError(t, b.core.Submit(b.ctx, proto.SourceBatch, batch, false))
	require.False(t, b.kept(t, "batch"), "only the endpoint API's jobs can be retried")
}

// TestRetryKeepsTheCopyForTheNewRun: /retry takes the job from its copy
// and keeps it again, with a fresh TTL, until the retried run's
// retention ends.
func TestRetryKeepsTheCopyForTheNewRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sw, err := b.core.NewSweeper(lifecycle.SweeperConfig{})
	require.NoError(t, err)
	b.submitAPI(t, apiJob("j", 400*time.Millisecond))
	cl := b.claim(t, "w1", time.Minute)
	require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusFailed, Error: "boom"}))

	first := b.record(t, "j")
	data, err := b.q.KeptRequest(b.ctx, "j")
	require.NoError(t, err)
	kept, err := proto.DecodeJob(data)
	require.NoError(t, err)
	_, err = b.core.Retry(b.ctx, kept)
	require.NoError(t, err)
	// The first run's end no longer counts: sweeps past the end of its
	// retention, by Redis's clock, leave the copy of the queued retry.
	due := first.FinishedAt.Add(400 * time.Millisecond)
	require.Eventually(t, func() bool {
		require.NoError(t, sw.RunOnce(b.ctx))
		now, err := b.db.Time(b.ctx)
		require.NoError(t, err)
		return now.After(due.Add(100 * time.Millisecond))
	}, 10*time.Second, 20*time.Millisecond)
	require.NoError(t, sw.RunOnce(b.ctx))
	require.Equal(t, proto.StatusInQueue, b.record(t, "j").Status)
	require.True(t, b.kept(t, "j"), "the retry's copy stays while it runs")
	require.Greater(t, b.keptTTL(t, "j"), 86000, "kept again for the retry's whole life")

	cl = b.claim(t, "w1", time.Minute)
	in, err := proto.DecodeInput(cl.Job.Input)
	require.NoError(t, err)
	require.Equal(t, comfyKey, in.ComfyOrgAPIKey, "the retry runs with the job's own key")
	require.Equal(t, s3Secret, cl.Job.S3Config.AccessSecret)
	require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusFailed, Error: "boom again"}))
	b.sweepUntilGone(t, sw, "j")
}

// TestDeadLetterKeepsNoSecrets: the dead letter has the job message with
// its workflow byte for byte, its s3Config's bucket and endpoint, and
// neither the key nor the credentials, and says they were removed.
func TestDeadLetterKeepsNoSecrets(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.submitAPI(t, apiJob("dead", time.Minute))
	cl := b.claim(t, "w1", time.Minute)
	require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusFailed, Error: "boom", DeadLetter: true}))

	dls, err := b.q.DeadLetters(b.ctx, "", 10)
	require.NoError(t, err)
	require.Len(t, dls, 1)
	require.Equal(t, []string{proto.SecretComfyOrgAPIKey, proto.SecretS3AccessID, proto.SecretS3AccessSecret}, dls[0].SecretsRemoved)
	_, data, err := b.q.DeadLetterJob(b.ctx, dls[0].Seq)
	require.NoError(t, err)
	for _, secret := range []string{comfyKey, s3Secret, s3ID} {
		require.NotContains(t, string(data), secret)
	}
	require.Contains(t, string(data), `"workflow":`+bigSeedWF, "the workflow byte for byte")
	j, err := proto.DecodeJob(data)
	require.NoError(t, err)
	require.Equal(t, &proto.S3Config{BucketName: "outputs", EndpointURL: "https://s3.example.com", ObjectPath: "p"}, j.S3Config,
		"where the outputs were to go")
}

// TestReplayTakesTheSecretsAgain: a replay given the secrets runs with
// them; one without runs with the worker's own settings (no key, no
// s3Config); each says which.
func TestReplayTakesTheSecretsAgain(t *testing.T) {
	t.Parallel()
	deadLetter := func(t *testing.T, b *bundle, id string) uint64 {
		t.Helper()
		b.submitAPI(t, apiJob(id, time.Minute))
		cl := b.claim(t, "w1", time.Minute)
		require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusFailed, Error: "boom", DeadLetter: true}))
		dls, err := b.q.DeadLetters(b.ctx, "", 10)
		require.NoError(t, err)
		for _, d := range dls {
			if d.JobID == id {
				return d.Seq
			}
		}
		t.Fatalf("no dead letter of %s", id)
		return 0
	}

	t.Run("supplied", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		seq := deadLetter(t, b, "j")
		rep, err := b.core.Replay(b.ctx, seq, &proto.Secrets{ComfyOrgAPIKey: "ck-new", S3Config: &proto.S3Credentials{AccessID: "id-new", AccessSecret: "secret-new"}})
		require.NoError(t, err)
		require.Equal(t, proto.StatusInQueue, rep.Record.Status)
		require.Equal(t, map[string]proto.SecretSource{"comfy_org_api_key": proto.SecretSupplied, "s3Config": proto.SecretSupplied}, rep.Secrets)
		cl := b.claim(t, "w1", time.Minute)
		in, err := proto.DecodeInput(cl.Job.Input)
		require.NoError(t, err)
		require.Equal(t, "ck-new", in.ComfyOrgAPIKey)
		require.Contains(t, string(in.Workflow), "18446744073709551615")
		require.Equal(t, &proto.S3Config{AccessID: "id-new", AccessSecret: "secret-new", BucketName: "outputs",
			EndpointURL: "https://s3.example.com", ObjectPath: "p"}, cl.Job.S3Config)
		data, err := b.q.KeptRequest(b.ctx, "j")
		require.NoError(t, err)
		require.Contains(t, string(data), "secret-new", "kept for /retry of the replayed run")
	})
	t.Run("the worker's own settings", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		seq := deadLetter(t, b, "j")
		rep, err := b.core.Replay(b.ctx, seq, nil)
		require.NoError(t, err)
		require.Equal(t, map[string]proto.SecretSource{"comfy_org_api_key": proto.SecretWorker, "s3Config": proto.SecretWorker}, rep.Secrets)
		cl := b.claim(t, "w1", time.Minute)
		in, err := proto.DecodeInput(cl.Job.Input)
		require.NoError(t, err)
		require.Empty(t, in.ComfyOrgAPIKey, "COMFY_ORG_API_KEY applies")
		require.Nil(t, cl.Job.S3Config, "BUCKET_* apply")
	})
	t.Run("credentials for a job without s3Config", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		j := job("plain")
		b.submit(t, j)
		cl := b.claim(t, "w1", time.Minute)
		require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusFailed, Error: "boom", DeadLetter: true}))
		dls, err := b.q.DeadLetters(b.ctx, "", 10)
		require.NoError(t, err)
		_, err = b.core.Replay(b.ctx, dls[0].Seq, &proto.Secrets{S3Config: &proto.S3Credentials{AccessID: "a", AccessSecret: "s"}})
		var ie *proto.InputError
		require.ErrorAs(t, err, &ie)
		require.Equal(t, proto.StatusFailed, b.record(t, "plain").Status, "nothing changed")
		_, _, err = b.q.DeadLetterJob(b.ctx, dls[0].Seq)
		require.NoError(t, err, "the dead letter stays")
	})
}

// TestDeadLetterOfAnOldMessageStaysReplayable: a dead letter written
// before secrets were removed still holds them; its replay uses them, or
// those given.
func TestDeadLetterOfAnOldMessageStaysReplayable(t *testing.T) {
	t.Parallel()
	b := setup(t)
	j := apiJob("old", time.Minute)
	b.submitAPI(t, j)
	cl := b.claim(t, "w1", time.Minute)
	require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusFailed, Error: "boom"}))
	data, err := json.Marshal(cl.Job)
	require.NoError(t, err)
	require.NoError(t, b.q.PublishDeadLetter(b.ctx, proto.DefaultPool, "old", 1, data, "boom", nil, nil))
	dls, err := b.q.DeadLetters(b.ctx, "", 10)
	require.NoError(t, err)
	rep, err := b.core.Replay(b.ctx, dls[0].Seq, nil)
	require.NoError(t, err)
	require.Empty(t, rep.Secrets, "nothing was removed")
	cl = b.claim(t, "w1", time.Minute)
	require.Equal(t, s3Secret, cl.Job.S3Config.AccessSecret)
	require.True(t, bytes.Contains(cl.Job.Input, []byte(comfyKey)))
	require.Equal(t, 2, cl.Attempt)
}
