package dispatch

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backoff"
	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/proto"
)

// WebhookConfig configures webhook delivery. The zero value of each field
// is its default.
type WebhookConfig struct {
	// Secret signs every delivery in the Standard Webhooks style
	// (webhook-id, webhook-timestamp, webhook-signature headers). A secret
	// of the form "whsec_<base64>" is the base64-decoded key, as Standard
	// Webhooks libraries expect; any other value is the key's bytes. Empty
	// means deliveries are not signed.
	Secret string
	// Retries is how many times a failed delivery is tried again; 0 means
	// 2 (RunPod's), a negative value none.
	Retries int
	// RetryDelay is the wait before the first retry; each later retry
	// waits twice as long as the one before. 0 means 10 s (RunPod's).
	RetryDelay time.Duration
	// Timeout bounds one POST; 0 means 10 s.
	Timeout time.Duration
	// Allow lists hosts, IPs and CIDR prefixes webhook URLs may reach
	// although the SSRF guard forbids them (loopback, private, link-local).
	Allow []string
	// Concurrency bounds the deliveries in flight in one dispatcher; 0
	// means 16.
	Concurrency int
	// AckWait is how long a delivery may stay unanswered before another
	// replica takes it (a dispatcher that died mid-delivery); 0 means
	// 3 × Timeout.
	AckWait time.Duration
	// TargetTTL is how long a job's webhook URL is kept after admission;
	// 0 means 7 days.
	TargetTTL time.Duration
}

// Validate checks the configuration.
func (c WebhookConfig) Validate() error {
	if c.RetryDelay < 0 || c.Timeout < 0 || c.AckWait < 0 || c.TargetTTL < 0 {
		return errors.New("webhook durations must not be negative")
	}
	if c.Concurrency < 0 {
		return fmt.Errorf("webhook concurrency %d is negative", c.Concurrency)
	}
	if _, err := ssrf.ParseAllowList(c.Allow); err != nil {
		return fmt.Errorf("webhook allow list: %w", err)
	}
	if _, err := signingKey(c.Secret); err != nil {
		return err
	}
	return nil
}

func (c WebhookConfig) withDefaults() WebhookConfig {
	if c.Retries == 0 {
		c.Retries = 2
	}
	if c.Retries < 0 {
		c.Retries = 0
	}
	if c.RetryDelay == 0 {
		c.RetryDelay = 10 * time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Concurrency == 0 {
		c.Concurrency = 16
	}
	if c.AckWait == 0 {
		c.AckWait = 3 * c.Timeout
	}
	if c.TargetTTL == 0 {
		c.TargetTTL = 7 * 24 * time.Hour
	}
	return c
}

// signingKey decodes a Standard Webhooks secret.
func signingKey(secret string) ([]byte, error) {
	if rest, ok := strings.CutPrefix(secret, "whsec_"); ok {
		key, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			return nil, errors.New("webhook secret: whsec_ secret is not valid base64")
		}
		return key, nil
	}
	return []byte(secret), nil
}

// Sign returns the Standard Webhooks signature header value of a delivery:
// "v1," and the base64 HMAC-SHA256 of "<id>.<timestamp>.<body>".
func Sign(key []byte, id string, timestamp int64, body []byte) string {
	mac := hmac.New(sha256.New, key)
	fmt.Fprintf(mac, "%s.%d.", id, timestamp)
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// WebhookTargets stores each job's webhook URL in Redis from admission
// until its delivery: the status record does not carry it, and the job
// message is gone once a worker acks it.
type WebhookTargets struct {
	rdb    redis.UniversalClient
	prefix string
	ttl    time.Duration
}

// NewWebhookTargets returns the store; prefix is prepended to every key
// (tests), ttl 0 means 7 days.
func NewWebhookTargets(rdb redis.UniversalClient, prefix string, ttl time.Duration) *WebhookTargets {
	if ttl == 0 {
		ttl = 7 * 24 * time.Hour
	}
	return &WebhookTargets{rdb: rdb, prefix: prefix, ttl: ttl}
}

func (t *WebhookTargets) key(id string) string { return t.prefix + "cf:webhook:" + id }

// Put records the webhook URL of a job.
func (t *WebhookTargets) Put(ctx context.Context, jobID, webhook string) error {
	_, err := t.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, t.key(jobID), "url", webhook)
		p.PExpire(ctx, t.key(jobID), t.ttl)
		return nil
	})
	if err != nil {
		return fmt.Errorf("record webhook of %s: %w", jobID, err)
	}
	return nil
}

// Get returns the webhook URL of a job ("" when it has none) and the mark
// of the last delivery that ended (MarkSent).
func (t *WebhookTargets) Get(ctx context.Context, jobID string) (url, sent string, err error) {
	vals, err := t.rdb.HMGet(ctx, t.key(jobID), "url", "sent").Result()
	if err != nil {
		return "", "", fmt.Errorf("read webhook of %s: %w", jobID, err)
	}
	url, _ = vals[0].(string)
	sent, _ = vals[1].(string)
	return url, sent, nil
}

// MarkSent records that the delivery named mark ended (delivered, or out
// of retries), so a duplicate of its event is not delivered again.
func (t *WebhookTargets) MarkSent(ctx context.Context, jobID, mark string) error {
	if err := t.rdb.HSet(ctx, t.key(jobID), "sent", mark).Err(); err != nil {
		return fmt.Errorf("mark webhook of %s sent: %w", jobID, err)
	}
	return nil
}

// WebhookRecorder is what admission needs to remember a job's webhook.
type WebhookRecorder interface {
	Put(ctx context.Context, jobID, webhook string) error
}

var _ WebhookRecorder = (*WebhookTargets)(nil)

// RecordStore reads status records.
type RecordStore interface {
	Get(ctx context.Context, id string) (*proto.Record, error)
}

var _ RecordStore = (*status.Store)(nil)

// WebhookDeps are the collaborators of a Webhooks deliverer.
type WebhookDeps struct {
	JetStream jetstream.JetStream
	Targets   *WebhookTargets
	Records   RecordStore
	// Blobs holds the outputs the job view inlines; nil leaves blob items
	// out (with a line in the output's errors).
	Blobs blob.Store
	// Metrics, when set, counts deliveries by result.
	Metrics *Metrics
}

// Webhooks delivers each job's terminal status to its webhook URL. It
// reads terminal status events from a durable consumer of CF_EVENTS shared
// by every dispatcher replica: a delivery not acknowledged (its
// dispatcher died) goes to another replica after AckWait, and retries wait
// in JetStream (NAK with delay), so a restart loses none.
type Webhooks struct {
	cfg    WebhookConfig
	deps   WebhookDeps
	key    []byte
	client *http.Client
	log    *zap.Logger

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// WebhookConsumer is the durable consumer's name.
const WebhookConsumer = "webhooks"

// NewWebhooks builds a deliverer.
func NewWebhooks(cfg WebhookConfig, deps WebhookDeps, log *zap.Logger) (*Webhooks, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("webhooks config: %w", err)
	}
	cfg = cfg.withDefaults()
	key, _ := signingKey(cfg.Secret)
	allow, _ := ssrf.ParseAllowList(cfg.Allow)
	client := ssrf.Client(allow, true, nil, errWebhookForbidden)
	client.Timeout = cfg.Timeout
	if log == nil {
		log = zap.NewNop()
	}
	if deps.Blobs == nil {
		deps.Blobs = noBlobs{}
	}
	return &Webhooks{cfg: cfg, deps: deps, key: key, client: client, log: log.Named("webhooks")}, nil
}

// Start opens the durable consumer and delivers in the background. It
// returns once delivery runs.
func (w *Webhooks) Start(ctx context.Context) error {
	cons, err := w.deps.JetStream.CreateOrUpdateConsumer(ctx, proto.EventsStream, jetstream.ConsumerConfig{
		Durable:       WebhookConsumer,
		FilterSubject: proto.EventSubjects,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       w.cfg.AckWait,
		// Events older than the consumer are not ours to deliver: the
		// consumer exists before the first dispatcher admits anything.
		DeliverPolicy: jetstream.DeliverNewPolicy,
		MaxDeliver:    -1, // attempts are bounded by Retries here
		MaxAckPending: 10000,
	})
	if err != nil {
		return fmt.Errorf("start webhooks: open consumer: %w", err)
	}
	// Pull no more than can be delivered at once, so nothing ages toward
	// AckWait in a buffer.
	it, err := cons.Messages(jetstream.PullMaxMessages(w.cfg.Concurrency))
	if err != nil {
		return fmt.Errorf("start webhooks: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done != nil {
		it.Stop()
		return errors.New("start webhooks: already started")
	}
	ctx, w.cancel = context.WithCancel(context.WithoutCancel(ctx))
	w.done = make(chan struct{})
	go w.loop(ctx, it)
	return nil
}

// Stop stops pulling, cancels the deliveries in flight (they are NAKed, so
// another replica retries them at once) and waits for them.
func (w *Webhooks) Stop() {
	w.mu.Lock()
	cancel, done := w.cancel, w.done
	w.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
	w.mu.Lock()
	if w.done == done {
		w.cancel, w.done = nil, nil
	}
	w.mu.Unlock()
}

func (w *Webhooks) loop(ctx context.Context, it jetstream.MessagesContext) {
	defer close(w.done)
	var wg sync.WaitGroup
	sem := make(chan struct{}, w.cfg.Concurrency)
	bo := backoff.New(50*time.Millisecond, 5*time.Second)
	stopped := make(chan struct{})
	go func() {
		<-ctx.Done()
		it.Stop() // unblocks Next
		close(stopped)
	}()
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				break
			}
			w.log.Warn("fetch events", zap.Error(err))
			bo.Wait(ctx)
			continue
		}
		bo.Reset()
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			w.handle(ctx, msg)
		}()
	}
	<-stopped
	wg.Wait()
}

// handle settles one event message: ack when it needs no delivery or the
// delivery ended (delivered, refused for good, or out of retries), NAK
// with the backoff delay when it is to be tried again.
func (w *Webhooks) handle(ctx context.Context, msg jetstream.Msg) {
	ev, err := proto.DecodeEvent(msg.Data())
	if err != nil || ev.Type != proto.EventStatus || !ev.Status.Terminal() {
		_ = msg.Ack()
		return
	}
	md, err := msg.Metadata()
	if err != nil {
		_ = msg.Ack()
		return
	}
	target, sent, err := w.deps.Targets.Get(ctx, ev.JobID)
	if err != nil {
		w.retryLater(ctx, msg, time.Second)
		return
	}
	if target == "" {
		_ = msg.Ack()
		return
	}
	attempt := int(md.NumDelivered)
	body, mark, err := w.body(ctx, ev, md.Sequence.Stream)
	switch {
	case err != nil:
		w.retryLater(ctx, msg, time.Second)
		return
	case mark == "" || mark == sent:
		// Superseded (the record moved on) or a duplicate event of a
		// delivery that already ended.
		_ = msg.Ack()
		return
	}
	// The id is the same for every try of one delivery, as Standard
	// Webhooks asks, so a receiver can drop duplicates.
	id := ev.JobID + "." + mark
	err = w.post(ctx, target, id, body)
	switch {
	case err == nil:
		w.count("delivered")
		w.markSent(ctx, ev.JobID, mark)
		_ = msg.Ack()
		w.log.Debug("delivered", zap.String("job_id", ev.JobID), zap.Int("attempt", attempt))
	case ctx.Err() != nil:
		// Stopping: hand it to another replica at once.
		_ = msg.Nak()
	case errors.Is(err, errPermanent):
		w.count("refused")
		w.markSent(ctx, ev.JobID, mark)
		_ = msg.Ack()
		w.log.Warn("webhook refused", zap.String("job_id", ev.JobID), zap.Error(err))
	case attempt > w.cfg.Retries:
		w.count("failed")
		w.markSent(ctx, ev.JobID, mark)
		_ = msg.Ack()
		w.log.Warn("webhook failed", zap.String("job_id", ev.JobID), zap.Int("attempts", attempt), zap.Error(err))
	default:
		w.count("retried")
		delay := w.cfg.RetryDelay << (attempt - 1)
		_ = msg.NakWithDelay(delay)
		w.log.Info("webhook failed, will retry", zap.String("job_id", ev.JobID), zap.Int("attempt", attempt), zap.Duration("delay", delay), zap.Error(err))
	}
}

func (w *Webhooks) retryLater(ctx context.Context, msg jetstream.Msg, d time.Duration) {
	if ctx.Err() != nil {
		_ = msg.Nak()
		return
	}
	_ = msg.NakWithDelay(d)
}

func (w *Webhooks) count(result string) {
	if w.deps.Metrics != nil {
		w.deps.Metrics.WebhookDeliveries.Inc(result)
	}
}

func (w *Webhooks) markSent(ctx context.Context, jobID, mark string) {
	if err := w.deps.Targets.MarkSent(ctx, jobID, mark); err != nil {
		w.log.Warn("mark webhook sent", zap.String("job_id", jobID), zap.Error(err))
	}
}

// body is the job's RunPod status view, as /status answers it, and the
// delivery's mark: the end time of the job's record, so that duplicate
// events of one ending make one delivery. A record that moved on (another
// terminal status won, or /retry requeued the job) gives mark "": nothing
// to deliver for this event. A record that expired gives the event's own
// view, marked by the event's sequence.
func (w *Webhooks) body(ctx context.Context, ev *proto.Event, seq uint64) (body []byte, mark string, err error) {
	rec, err := w.deps.Records.Get(ctx, ev.JobID)
	switch {
	case errors.Is(err, status.ErrNotFound):
		view := &runpod.JobView{ID: ev.JobID, Status: ev.Status, Error: ev.Error, WorkerID: ev.WorkerID}
		body, err := json.Marshal(view)
		return body, "seq" + strconv.FormatUint(seq, 10), err
	case err != nil:
		return nil, "", err
	case rec.Status != ev.Status:
		return nil, "", nil
	}
	view, err := runpod.BuildView(ctx, w.deps.Blobs, rec)
	if err != nil {
		return nil, "", err
	}
	body, err = json.Marshal(view)
	return body, strconv.FormatInt(rec.FinishedAt.UnixMilli(), 10), err
}

var (
	errPermanent        = errors.New("will not retry")
	errWebhookForbidden = fmt.Errorf("%w for webhooks", ssrf.ErrForbidden)
)

func (w *Webhooks) post(ctx context.Context, target, id string, body []byte) error {
	u, err := url.Parse(target)
	if err != nil {
		return fmt.Errorf("%w: webhook URL does not parse", errPermanent)
	}
	if err := ssrf.CheckScheme(u, true); err != nil {
		return fmt.Errorf("%w: webhook %s: %v", errPermanent, ssrf.Redact(u), err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: webhook %s: %v", errPermanent, ssrf.Redact(u), err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "comfyfleet-webhook")
	if len(w.key) > 0 {
		ts := time.Now().Unix()
		req.Header.Set("webhook-id", id)
		req.Header.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
		req.Header.Set("webhook-signature", Sign(w.key, id, ts, body))
	}
	resp, err := w.client.Do(req)
	if err != nil {
		if errors.Is(err, ssrf.ErrForbidden) {
			return fmt.Errorf("%w: webhook %s: %v", errPermanent, ssrf.Redact(u), ssrf.ErrForbidden)
		}
		return fmt.Errorf("post webhook %s: %w", ssrf.Redact(u), redactErr(err))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("post webhook %s: answered %s", ssrf.Redact(u), resp.Status)
	}
	return nil
}

// redactErr keeps a *url.Error's cause without its URL, which may carry a
// secret in its query.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// noBlobs is the blob store of a deliverer given none.
type noBlobs struct{}

func (noBlobs) Put(context.Context, string, string, io.Reader) (blob.Info, error) {
	return blob.Info{}, blob.ErrNotFound
}

func (noBlobs) Get(context.Context, string) (io.ReadCloser, blob.Info, error) {
	return nil, blob.Info{}, blob.ErrNotFound
}

func (noBlobs) Delete(context.Context, string) error { return nil }
