package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// natsEnv is the environment compose gives the nats service (the
// passwords of nats.conf's users), given to this process as the container
// would have it, so that nats.conf's $NATS_*_PASSWORD resolve: once for
// the whole test binary, with compose's defaults.
var natsEnv struct {
	once sync.Once
	vars map[string]string
}

// composeNATSOptions reads deploy/compose/nats.conf with the environment
// compose gives the nats service.
func composeNATSOptions(t *testing.T) *server.Options {
	t.Helper()
	natsEnv.once.Do(func() {
		natsEnv.vars = map[string]string{}
		for k, v := range allProfiles(t).Services["nats"].Environment {
			natsEnv.vars[k] = deref(v)
			// os.Setenv, not t.Setenv: the tests that read nats.conf run in
			// parallel, and all want the same values.
			require.NoError(t, os.Setenv(k, deref(v)))
		}
	})
	require.NotEmpty(t, natsEnv.vars, "compose gives the nats service the users' passwords")
	opts, err := server.ProcessConfigFile(repoPath("deploy", "compose", "nats.conf"))
	require.NoError(t, err)
	return opts
}

// natsUser connects as one of nats.conf's users; violations come on the
// returned channel.
func natsUser(t *testing.T, addr, user string, opts ...nats.Option) (*nats.Conn, <-chan error) {
	t.Helper()
	pw := natsEnv.vars["NATS_"+strings.ToUpper(user)+"_PASSWORD"]
	require.NotEmpty(t, pw, user)
	errs := make(chan error, 16)
	opts = append(opts, nats.UserInfo(user, pw), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case errs <- err:
		default:
		}
	}))
	nc, err := nats.Connect("nats://"+addr, opts...)
	require.NoError(t, err, user)
	t.Cleanup(nc.Close)
	return nc, errs
}

// refused checks that the server refused what the connection just did.
func refused(t *testing.T, errs <-chan error, what string) {
	t.Helper()
	select {
	case err := <-errs:
		require.ErrorIs(t, err, nats.ErrPermissionViolation, what)
		require.Contains(t, err.Error(), what)
	case <-time.After(5 * time.Second):
		t.Fatalf("%s was not refused", what)
	}
}

// TestComposeNATSUsersHaveLeastPrivilege: with deploy/compose/nats.conf, a
// batch producer may publish on its own tenant's submit subject alone and
// read its own tenant's events and rejects alone; a worker cannot submit
// jobs, publish admitted ones or read the intake; the adapter cannot
// submit as the batch source. (TestSimProfileRunsAJob runs the roles under
// these users end to end.)
func TestComposeNATSUsersHaveLeastPrivilege(t *testing.T) {
	t.Parallel()
	addr, _ := startComposeNATS(t)
	ctx := testenv.Context(t, time.Minute)

	// The streams, as every role makes them at its start.
	op, _ := natsUser(t, addr, "operator")
	q, err := queue.New(op)
	require.NoError(t, err)
	require.NoError(t, q.Ensure(ctx, queue.Config{}))

	// The producer of tenant "producer", as examples/batch_producer.py
	// connects: its own inbox prefix, for the PubAcks.
	pc, perrs := natsUser(t, addr, "producer", nats.CustomInboxPrefix("_INBOX_producer"))
	pjs, err := jetstream.New(pc)
	require.NoError(t, err)
	own := make(chan *nats.Msg, 4)
	_, err = pc.ChanSubscribe(proto.TenantEventSubjects("producer", proto.EventClassFinal), own)
	require.NoError(t, err)
	require.NoError(t, pc.Flush())
	ack, err := pjs.Publish(ctx, proto.SubmitSubject(proto.SourceBatch, "producer"), []byte(`{"id":"p-1","input":{}}`))
	require.NoError(t, err, "its own tenant's subject")
	require.Equal(t, proto.SubmitStream, ack.Stream)

	for _, subject := range []string{"cf.submit.batch", "cf.submit.batch.other", "cf.submit.api.producer", "cf.jobs.default.batch", "cf.ctl.cancel"} {
		require.NoError(t, pc.Publish(subject, []byte(`{}`)))
		refused(t, perrs, `Publish to "`+subject+`"`)
	}
	for _, subject := range []string{"cf.events.>", "cf.events.*.final.other", "cf.events.j.final.*", "cf.rejects.other", "_INBOX.>", "cf.ctl.cancel"} {
		_, err := pc.SubscribeSync(subject)
		require.NoError(t, err)
		refused(t, perrs, `Subscription to "`+subject+`"`)
	}
	// Another tenant's event never reaches it; its own does.
	require.NoError(t, op.Publish(proto.EventSubject("j-2", proto.EventClassFinal, "other"), []byte(`{}`)))
	require.NoError(t, op.Publish(proto.EventSubject("p-1", proto.EventClassFinal, "producer"), []byte(`{"job_id":"p-1"}`)))
	select {
	case m := <-own:
		require.Equal(t, "cf.events.p-1.final.producer", m.Subject)
	case <-time.After(5 * time.Second):
		t.Fatal("the producer's own event did not come")
	}

	// A worker: no submissions, no admitted jobs, no intake.
	wc, werrs := natsUser(t, addr, "worker")
	for _, subject := range []string{"cf.submit.batch", "cf.submit.api.acme", "cf.jobs.default.interactive", "cf.rejects.default"} {
		require.NoError(t, wc.Publish(subject, []byte(`{}`)))
		refused(t, werrs, `Publish to "`+subject+`"`)
	}
	wjs, err := jetstream.New(wc)
	require.NoError(t, err)
	// A refused JetStream request gets no answer: it times out, and the
	// server says why on the connection.
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, time.Second)
		t.Cleanup(cancel)
		return c
	}
	_, err = wjs.CreateOrUpdateConsumer(short(), proto.SubmitStream, jetstream.ConsumerConfig{Durable: "steal", FilterSubject: proto.SubmitSubjects})
	require.Error(t, err, "a worker cannot read the intake (with its secrets)")
	refused(t, werrs, `Publish to "$JS.API.CONSUMER.CREATE.CF_SUBMIT.steal`)
	require.Error(t, wjs.DeleteStream(short(), proto.JobsStream), "nor delete a stream")
	refused(t, werrs, `Publish to "$JS.API.STREAM.DELETE.CF_JOBS"`)
	_, err = wjs.Stream(ctx, proto.SubmitStream)
	require.NoError(t, err, "stream info is allowed")

	// The adapter submits as the API and serverless mode, not as a batch
	// producer.
	ac, aerrs := natsUser(t, addr, "adapter")
	require.NoError(t, ac.Publish("cf.submit.batch.producer", []byte(`{}`)))
	refused(t, aerrs, `Publish to "cf.submit.batch.producer"`)

	// Nothing of the refused publishes reached the intake: only p-1.
	s, err := op.JetStream()
	require.NoError(t, err)
	info, err := s.StreamInfo(proto.SubmitStream)
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.State.Msgs)
	var body struct{ ID string }
	m, err := s.GetLastMsg(proto.SubmitStream, "cf.submit.batch.producer")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(m.Data, &body))
	require.Equal(t, "p-1", body.ID)
	require.False(t, errors.Is(err, nats.ErrPermissionViolation))
}

// TestComposeServicesConnectAsTheirRole: each comfyfleet service names
// its role's NATS user, with the password the nats service gives it.
func TestComposeServicesConnectAsTheirRole(t *testing.T) {
	t.Parallel()
	p := allProfiles(t)
	for name, s := range p.Services {
		if s.Build == nil || s.Build.Target == "comfysim" || s.Build.Dockerfile == "Dockerfile.worker" {
			continue
		}
		user := map[string]string{"dispatcher": "dispatcher", "runpod-adapter": "adapter", "gpuworker": "worker"}[s.Build.Target]
		require.NotEmpty(t, user, "%s: which role is %s?", name, s.Build.Target)
		pw := deref(p.Services["nats"].Environment["NATS_"+strings.ToUpper(user)+"_PASSWORD"])
		require.NotEmpty(t, pw)
		require.Equal(t, "nats://"+user+":"+pw+"@nats:4222", deref(s.Environment["NATS_URL"]), name)
	}
}
