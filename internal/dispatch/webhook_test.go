package dispatch_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// receiver is an httptest webhook receiver that records every request and
// answers with what answer returns (200 when nil).
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	got    []delivery
	answer func(n int, r *http.Request) int
	calls  chan delivery
}

type delivery struct {
	header http.Header
	body   []byte
}

func newReceiver(t *testing.T, answer func(n int, r *http.Request) int) *receiver {
	rc := &receiver{answer: answer, calls: make(chan delivery, 100)}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		d := delivery{header: r.Header.Clone(), body: body}
		rc.mu.Lock()
		rc.got = append(rc.got, d)
		n := len(rc.got)
		rc.mu.Unlock()
		rc.calls <- d
		code := http.StatusOK
		if rc.answer != nil {
			code = rc.answer(n, r)
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.got)
}

func (rc *receiver) next(t *testing.T) delivery {
	t.Helper()
	select {
	case d := <-rc.calls:
		return d
	case <-time.After(15 * time.Second):
		t.Fatal("no webhook delivery")
		return delivery{}
	}
}

type hookBundle struct {
	nats    *testenv.NATS
	q       *queue.Client
	db      *rdb.DB
	core    *lifecycle.Core
	blobs   blob.Store
	reg     *metrics.Registry
	metrics *dispatch.Metrics
}

func setupHooks(t *testing.T) *hookBundle {
	t.Helper()
	n := testenv.StartNATS(t)
	rc, prefix := testenv.Redis(t)
	q, err := queue.New(n.Conn)
	require.NoError(t, err)
	ctx := testenv.Context(t, 30*time.Second)
	require.NoError(t, q.Ensure(ctx, queue.Config{}))
	reg := metrics.NewRegistry()
	db := rdb.New(rc, rdb.Options{Prefix: prefix})
	return &hookBundle{
		nats: n, q: q, db: db, core: lifecycle.New(db, q, zaptest.NewLogger(t)), blobs: q.Blobs(),
		reg: reg, metrics: dispatch.NewMetrics(reg, nil),
	}
}

// start runs a deliverer on its own connection; the returned kill closes
// that connection first (so the deliverer can neither ack nor NAK, as if
// its process died) and then stops it.
func (b *hookBundle) start(t *testing.T, cfg dispatch.WebhookConfig) (*dispatch.Webhooks, func()) {
	t.Helper()
	nc, _ := b.nats.Connect(t)
	wq, err := queue.New(nc)
	require.NoError(t, err)
	if cfg.Allow == nil {
		cfg.Allow = []string{"127.0.0.1:*"}
	}
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = 20 * time.Millisecond
	}
	w, err := dispatch.NewWebhooks(cfg, dispatch.WebhookDeps{
		Queue: wq, DB: b.db, Blobs: b.blobs, Metrics: b.metrics,
	}, zaptest.NewLogger(t))
	require.NoError(t, err)
	require.NoError(t, w.Start(testenv.Context(t, 10*time.Second)))
	kill := func() { nc.Close(); w.Stop() }
	t.Cleanup(kill)
	return w, kill
}

// finish plays a job's life without a worker: recorded with a webhook,
// claimed by w1, finished with to, and its final event published.
func (b *hookBundle) finish(t *testing.T, id, webhook string, to proto.Status, output, errMsg string) {
	t.Helper()
	ctx := testenv.Context(t, 10*time.Second)
	job := &proto.Job{ID: id, Input: json.RawMessage(`{"workflow":{}}`), Webhook: webhook}
	job.Place(proto.DefaultPool, time.Now())
	_, _, err := b.db.Create(ctx, rdb.ParamsFor(job), time.Time{}, false)
	require.NoError(t, err)
	require.NoError(t, b.db.PutWebhook(ctx, id, webhook))
	attempt := b.claim(t, id)
	var out json.RawMessage
	if output != "" {
		out = json.RawMessage(output)
	}
	if to == proto.StatusCancelled {
		_, _, err = b.db.Cancel(ctx, id)
	} else {
		_, err = b.db.Finish(ctx, id, attempt, to, out, errMsg, false)
	}
	require.NoError(t, err)
	require.NoError(t, b.q.PublishEvent(ctx, &proto.Event{JobID: id, Type: proto.EventStatus, Status: to, Error: errMsg, WorkerID: "w1", Attempt: attempt}))
}

// requireOutcome waits for the job's record to say how its webhook
// delivery ended (it is written just before the event is acked).
func (b *hookBundle) requireOutcome(t *testing.T, id string, want proto.WebhookOutcome) {
	t.Helper()
	var rec *proto.Record
	require.Eventually(t, func() bool {
		var err error
		rec, err = b.db.Get(context.Background(), id)
		return err == nil && rec.Webhook != nil
	}, 10*time.Second, 10*time.Millisecond, "the record has the webhook's outcome")
	require.Equal(t, want, *rec.Webhook)
}

// claim gives the job to worker w1 and returns its attempt.
func (b *hookBundle) claim(t *testing.T, id string) int {
	t.Helper()
	got, err := b.db.Claim(testenv.Context(t, 10*time.Second), rdb.ClaimParams{ID: id, WorkerID: "w1", LeaseTTL: time.Minute})
	require.NoError(t, err)
	return got.Lease.Attempt
}

// settled waits until the webhook consumer has nothing pending or
// unacknowledged: every delivery has ended.
func (b *hookBundle) settled(t *testing.T) {
	t.Helper()
	require.Eventually(t, func() bool {
		c, err := b.nats.JS.Consumer(context.Background(), proto.EventsStream, proto.WebhookConsumer)
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	}, 15*time.Second, 10*time.Millisecond)
}

func (b *hookBundle) scrape(t *testing.T) string {
	t.Helper()
	var buf bytes.Buffer
	require.NoError(t, b.reg.Write(context.Background(), &buf))
	return buf.String()
}

// verify checks a Standard Webhooks signature without the package's code.
func verify(t *testing.T, secret string, d delivery) {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	require.NoError(t, err)
	id, ts := d.header.Get("webhook-id"), d.header.Get("webhook-timestamp")
	require.NotEmpty(t, id)
	sec, err := strconv.ParseInt(ts, 10, 64)
	require.NoError(t, err)
	require.InDelta(t, time.Now().Unix(), sec, 60)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(d.body)
	want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	require.Equal(t, want, d.header.Get("webhook-signature"))
}

func TestWebhookDeliversCompletedJobThroughAdmission(t *testing.T) {
	t.Parallel()
	b := setupHooks(t)
	secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	rc := newReceiver(t, nil)
	b.start(t, dispatch.WebhookConfig{Secret: secret})

	// The dispatcher records the webhook at admission.
	d, err := dispatch.New(dispatch.Config{FetchWait: 200 * time.Millisecond}, b.q, b.core, dispatch.Admission{Metrics: b.metrics}, zaptest.NewLogger(t))
	require.NoError(t, err)
	ctx := testenv.Context(t, 20*time.Second)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(d.Stop)
	_, err = b.q.Submit(ctx, proto.SourceAPI, &proto.Job{ID: "hook-ok", Input: json.RawMessage(`{"workflow":{}}`), Webhook: rc.srv.URL + "/hook?token=s3cr3t"})
	require.NoError(t, err)
	// Admission is over once the job is on its lane, its last step.
	require.Eventually(t, func() bool {
		st, err := b.nats.JS.Stream(ctx, proto.JobsStream)
		if err != nil {
			return false
		}
		info, err := st.Info(ctx)
		return err == nil && info.State.Msgs == 1
	}, 10*time.Second, 10*time.Millisecond)
	r, err := b.db.Get(ctx, "hook-ok")
	require.NoError(t, err)
	require.Equal(t, proto.StatusInQueue, r.Status)
	u, _, err := b.db.Webhook(ctx, "hook-ok")
	require.NoError(t, err)
	require.Equal(t, rc.srv.URL+"/hook?token=s3cr3t", u)

	// A worker finishes it with an image in the blob store.
	_, err = b.blobs.Put(ctx, "out/hook-ok/1/a.png", "image/png", strings.NewReader("PNGDATA"))
	require.NoError(t, err)
	attempt := b.claim(t, "hook-ok")
	_, err = b.db.Finish(ctx, "hook-ok", attempt, proto.StatusCompleted,
		json.RawMessage(`{"images":[{"filename":"a.png","type":"base64","blob":"out/hook-ok/1/a.png","size":7}]}`), "", false)
	require.NoError(t, err)
	require.NoError(t, b.q.PublishEvent(ctx, &proto.Event{JobID: "hook-ok", Type: proto.EventStatus, Status: proto.StatusCompleted}))

	got := rc.next(t)
	verify(t, secret, got)
	require.Equal(t, "application/json", got.header.Get("Content-Type"))
	var view struct {
		ID, Status, WorkerID string
		Output               struct {
			Images []struct{ Filename, Type, Data string }
		}
	}
	require.NoError(t, json.Unmarshal(got.body, &view))
	require.Equal(t, "hook-ok", view.ID)
	require.Equal(t, "COMPLETED", view.Status)
	require.Equal(t, "w1", view.WorkerID)
	require.Len(t, view.Output.Images, 1)
	require.Equal(t, base64.StdEncoding.EncodeToString([]byte("PNGDATA")), view.Output.Images[0].Data)
	require.NotContains(t, string(got.body), `"blob"`)
	b.settled(t)
	require.Equal(t, 1, rc.count(), "one delivery")
	m := b.scrape(t)
	require.Contains(t, m, `comfyfleet_webhook_deliveries_total{result="delivered"} 1`)
	require.Contains(t, m, `comfyfleet_jobs_admitted_total{lane="interactive",pool="default"} 1`)
}

func TestWebhookDeliversFailureUnsigned(t *testing.T) {
	t.Parallel()
	b := setupHooks(t)
	rc := newReceiver(t, nil)
	b.start(t, dispatch.WebhookConfig{})
	b.finish(t, "hook-fail", rc.srv.URL, proto.StatusFailed, "", "Workflow execution error: boom")
	got := rc.next(t)
	require.Empty(t, got.header.Get("webhook-signature"))
	require.JSONEq(t, `{"id":"hook-fail","status":"FAILED","error":"Workflow execution error: boom","workerId":"w1"}`,
		stripTimes(t, got.body))
}

// stripTimes drops delayTime and executionTime, which depend on the clock.
func stripTimes(t *testing.T, body []byte) string {
	var m map[string]any
	require.NoError(t, json.Unmarshal(body, &m))
	delete(m, "delayTime")
	delete(m, "executionTime")
	out, _ := json.Marshal(m)
	return string(out)
}

func TestWebhookRetriesThenGivesUp(t *testing.T) {
	t.Parallel()
	b := setupHooks(t)
	rc := newReceiver(t, func(int, *http.Request) int { return http.StatusBadGateway })
	b.start(t, dispatch.WebhookConfig{Retries: 2})
	b.finish(t, "hook-down", rc.srv.URL, proto.StatusTimedOut, "", "timed out")
	for range 3 {
		rc.next(t)
	}
	b.settled(t)
	require.Equal(t, 3, rc.count(), "one try and two retries, then no more")
	b.requireOutcome(t, "hook-down", proto.WebhookOutcome{Delivered: false, Attempts: 3, LastStatus: 502, Error: "answered 502 Bad Gateway"})
	m := b.scrape(t)
	require.Contains(t, m, `comfyfleet_webhook_deliveries_total{result="retried"} 2`)
	require.Contains(t, m, `comfyfleet_webhook_deliveries_total{result="failed"} 1`)
}

func TestWebhookRetrySucceeds(t *testing.T) {
	t.Parallel()
	b := setupHooks(t)
	rc := newReceiver(t, func(n int, _ *http.Request) int {
		if n == 1 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	b.start(t, dispatch.WebhookConfig{Secret: "plain-secret"})
	b.finish(t, "hook-flaky", rc.srv.URL, proto.StatusCancelled, "", "")
	first, second := rc.next(t), rc.next(t)
	require.Equal(t, first.body, second.body)
	require.Equal(t, first.header.Get("webhook-id"), second.header.Get("webhook-id"), "one delivery, one id")
	b.settled(t)
	require.Equal(t, 2, rc.count())
	b.requireOutcome(t, "hook-flaky", proto.WebhookOutcome{Delivered: true, Attempts: 2, LastStatus: 200})
}

func TestWebhookSSRFGuardRefusesLoopback(t *testing.T) {
	t.Parallel()
	b := setupHooks(t)
	rc := newReceiver(t, nil)
	b.start(t, dispatch.WebhookConfig{Allow: []string{"10.9.9.9"}}) // not 127.0.0.1
	b.finish(t, "hook-ssrf", rc.srv.URL, proto.StatusCompleted, `{"images":[]}`, "")
	b.settled(t)
	require.Equal(t, 0, rc.count())
	require.Contains(t, b.scrape(t), `comfyfleet_webhook_deliveries_total{result="refused"} 1`)
	rec, err := b.db.Get(context.Background(), "hook-ssrf")
	require.NoError(t, err)
	require.NotNil(t, rec.Webhook)
	require.False(t, rec.Webhook.Delivered)
	require.Equal(t, 1, rec.Webhook.Attempts)
	require.Zero(t, rec.Webhook.LastStatus, "no answer")
	require.Contains(t, rec.Webhook.Error, "loopback", "the guard's reason")
}

// TestWebhookAllowIsPerPort: an entry without a port allows only the
// scheme's default port, so WEBHOOK_ALLOW=127.0.0.1 no longer opens every
// port of the host; an entry with the receiver's port does.
func TestWebhookAllowIsPerPort(t *testing.T) {
	t.Parallel()
	b := setupHooks(t)
	rc := testenv.StartCountingServer(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	b.start(t, dispatch.WebhookConfig{Allow: []string{"127.0.0.1"}})
	b.finish(t, "hook-port", rc.URL, proto.StatusCompleted, `{"images":[]}`, "")
	b.settled(t)
	require.Equal(t, 0, rc.Connections(t), "no connection to a port the list does not name")
	require.Contains(t, b.scrape(t), `comfyfleet_webhook_deliveries_total{result="refused"} 1`)

	b2 := setupHooks(t)
	b2.start(t, dispatch.WebhookConfig{Allow: []string{rc.HostPort()}})
	b2.finish(t, "hook-port", rc.URL, proto.StatusCompleted, `{"images":[]}`, "")
	b2.settled(t)
	require.Equal(t, 1, rc.Connections(t))
	require.Contains(t, b2.scrape(t), `comfyfleet_webhook_deliveries_total{result="delivered"} 1`)
}

// startLogged runs a deliverer whose warnings the test reads.
func (b *hookBundle) startLogged(t *testing.T, cfg dispatch.WebhookConfig) *observer.ObservedLogs {
	t.Helper()
	core, logs := observer.New(zapcore.WarnLevel)
	w, err := dispatch.NewWebhooks(cfg, dispatch.WebhookDeps{Queue: b.q, DB: b.db, Blobs: b.blobs, Metrics: b.metrics}, zap.New(core))
	require.NoError(t, err)
	require.NoError(t, w.Start(testenv.Context(t, 10*time.Second)))
	t.Cleanup(w.Stop)
	return logs
}

// webhookError is the error of the one warning about job id. The
// deliverer acks an event before it logs the outcome, so the warning may
// come just after the events settled: it is waited for.
func webhookError(t *testing.T, logs *observer.ObservedLogs, id string) string {
	t.Helper()
	var found []string
	require.Eventually(t, func() bool {
		found = found[:0]
		for _, e := range logs.All() {
			if e.ContextMap()["job_id"] == id {
				found = append(found, e.Message+": "+fmt.Sprint(e.ContextMap()["error"]))
			}
		}
		return len(found) > 0
	}, 10*time.Second, 5*time.Millisecond)
	require.Len(t, found, 1, "%v", found)
	return found[0]
}

// TestWebhookDoesNotFollowRedirects replays the attack: a receiver on an
// allowed port answers 307 to another port of the same host (the
// dispatcher's own API). The redirect is not followed, whatever the allow
// list says, and the delivery fails naming why.
func TestWebhookDoesNotFollowRedirects(t *testing.T) {
	t.Parallel()
	b := setupHooks(t)
	inside := testenv.StartCountingServer(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	rc := testenv.StartCountingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, inside.URL+"/dlq/1/replay", http.StatusTemporaryRedirect)
	}))
	logs := b.startLogged(t, dispatch.WebhookConfig{Allow: []string{"127.0.0.1:*"}, Retries: -1})
	b.finish(t, "hook-307", rc.URL+"/hook?token=s3cr3t", proto.StatusCompleted, `{"images":[]}`, "")
	b.settled(t)
	require.Equal(t, 0, inside.Connections(t), "the redirect reached nothing")
	require.Contains(t, b.scrape(t), `comfyfleet_webhook_deliveries_total{result="failed"} 1`)
	msg := webhookError(t, logs, "hook-307")
	require.Equal(t, 1, rc.Connections(t), "the receiver was reached")
	require.Contains(t, msg, "post webhook "+rc.URL+"/hook?…: answered 307; webhooks do not follow redirects")
	require.NotContains(t, msg, "s3cr3t")
}

// TestWebhookAnswerTextStaysOut: what a receiver says (its reason phrase,
// its body, a malformed answer) never reaches the dispatcher's log.
func TestWebhookAnswerTextStaysOut(t *testing.T) {
	t.Parallel()
	for name, answer := range map[string]string{
		"reason phrase": "HTTP/1.1 500 EVIL-REASON\r\nContent-Length: 9\r\nConnection: close\r\n\r\nEVIL-BODY",
		"malformed":     "EVIL-GARBAGE from the receiver\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setupHooks(t)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					buf := make([]byte, 64<<10)
					_, _ = c.Read(buf)
					_, _ = c.Write([]byte(answer))
					c.Close()
				}
			}()
			logs := b.startLogged(t, dispatch.WebhookConfig{Allow: []string{"127.0.0.1:*"}, Retries: -1})
			b.finish(t, "hook-evil", "http://"+ln.Addr().String()+"/", proto.StatusCompleted, `{"images":[]}`, "")
			b.settled(t)
			msg := webhookError(t, logs, "hook-evil")
			require.NotContains(t, msg, "EVIL")
			if name == "reason phrase" {
				require.Contains(t, msg, "answered 500 Internal Server Error")
			} else {
				require.Contains(t, msg, ": request failed")
			}
		})
	}
}

func TestWebhookSkipsJobsWithoutWebhookAndNonTerminalEvents(t *testing.T) {
	t.Parallel()
	b := setupHooks(t)
	rc := newReceiver(t, nil)
	b.start(t, dispatch.WebhookConfig{})
	ctx := testenv.Context(t, 10*time.Second)
	require.NoError(t, b.q.PublishEvent(ctx, &proto.Event{JobID: "nohook", Type: proto.EventStatus, Status: proto.StatusCompleted}))
	require.NoError(t, b.q.PublishEvent(ctx, &proto.Event{JobID: "nohook", Type: proto.EventProgress, Progress: &proto.Progress{Value: 1, Max: 2}}))
	b.finish(t, "hook-last", rc.srv.URL, proto.StatusCompleted, `{"images":[]}`, "")
	require.Contains(t, string(rc.next(t).body), `"hook-last"`)
	b.settled(t)
	require.Equal(t, 1, rc.count())
}

// A dispatcher that dies mid-delivery (its connection gone, so it can
// neither ack nor NAK) loses nothing: another replica delivers the job
// once AckWait has passed.
func TestWebhookDispatcherDeathMidDeliveryLosesNothing(t *testing.T) {
	t.Parallel()
	b := setupHooks(t)
	release := make(chan struct{})
	rc := newReceiver(t, func(n int, r *http.Request) int {
		if n == 1 {
			select { // hold the first delivery until its sender is gone
			case <-release:
			case <-r.Context().Done():
			}
			return http.StatusOK
		}
		return http.StatusOK
	})
	cfg := dispatch.WebhookConfig{AckWait: time.Second, Timeout: 20 * time.Second}
	_, killA := b.start(t, cfg)
	b.finish(t, "hook-kill", rc.srv.URL, proto.StatusCompleted, `{"images":[]}`, "")
	first := rc.next(t)

	// Replica A "dies": its NATS connection closes mid-delivery.
	killA()
	close(release)
	died := time.Now()
	b.start(t, cfg)
	second := rc.next(t)
	require.GreaterOrEqual(t, time.Since(died), 500*time.Millisecond, "redelivered after AckWait, not NAKed by the dead replica")
	require.Equal(t, first.body, second.body)
	b.settled(t)
	require.Equal(t, 2, rc.count(), "delivered again by the surviving replica, then no more")
	t.Logf("deliveries: %d (the first by the dead replica, never acknowledged)", rc.count())
}

func TestWebhookConfigValidate(t *testing.T) {
	t.Parallel()
	_, err := dispatch.NewWebhooks(dispatch.WebhookConfig{Secret: "whsec_%%%"}, dispatch.WebhookDeps{}, nil)
	require.ErrorContains(t, err, "base64")
	_, err = dispatch.NewWebhooks(dispatch.WebhookConfig{Allow: []string{"10.0.0.0/99"}}, dispatch.WebhookDeps{}, nil)
	require.ErrorContains(t, err, "allow list")
	_, err = dispatch.NewWebhooks(dispatch.WebhookConfig{Timeout: -1}, dispatch.WebhookDeps{}, nil)
	require.ErrorContains(t, err, "negative")
}

func TestSignMatchesStandardWebhooksExample(t *testing.T) {
	t.Parallel()
	// The example of the Standard Webhooks specification.
	key, _ := base64.StdEncoding.DecodeString("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	got := dispatch.Sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, []byte(`{"test": 2432232314}`))
	require.Equal(t, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", got)
}

// Duplicate events of one ending make one delivery, and an event the
// record contradicts (another terminal status won) makes none.
func TestWebhookDeliversOncePerEnding(t *testing.T) {
	t.Parallel()
	b := setupHooks(t)
	rc := newReceiver(t, nil)
	b.start(t, dispatch.WebhookConfig{})
	b.finish(t, "hook-dup", rc.srv.URL, proto.StatusCompleted, `{"images":[]}`, "")
	require.Contains(t, string(rc.next(t).body), `"COMPLETED"`)
	b.settled(t)
	ctx := testenv.Context(t, 10*time.Second)
	require.NoError(t, b.q.PublishEvent(ctx, &proto.Event{JobID: "hook-dup", Type: proto.EventStatus, Status: proto.StatusCompleted}))
	require.NoError(t, b.q.PublishEvent(ctx, &proto.Event{JobID: "hook-dup", Type: proto.EventStatus, Status: proto.StatusTimedOut}))
	b.settled(t)
	require.Equal(t, 1, rc.count())
}
