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

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backoff"
	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/jobview"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/internal/startstop"
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
	// Allow lists hosts, IPs and CIDR prefixes, each on a port, that
	// webhook URLs may reach although the SSRF guard forbids them
	// (loopback, private, link-local): "127.0.0.1:9000", "[::1]:9000",
	// "hooks.internal:8443", "10.0.0.0/8:*"; an entry without a port
	// allows the scheme's default port only (see ssrf.ParseAllowList).
	Allow []string
	// Concurrency bounds the deliveries in flight in one dispatcher; 0
	// means 16.
	Concurrency int
	// AckWait is how long a delivery may stay unanswered before another
	// replica takes it (a dispatcher that died mid-delivery); 0 means
	// 3 × Timeout.
	AckWait time.Duration
}

// Validate checks the configuration.
func (c WebhookConfig) Validate() error {
	if c.RetryDelay < 0 || c.Timeout < 0 || c.AckWait < 0 {
		return errors.New("webhook durations must not be negative")
	}
	if c.Concurrency < 0 {
		return fmt.Errorf("webhook concurrency %d is negative", c.Concurrency)
	}
	if _, err := webhookGuard(c); err != nil {
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

// WebhookDeps are the collaborators of a Webhooks deliverer.
type WebhookDeps struct {
	Queue *queue.Client
	// DB holds the webhook targets and the records.
	DB *rdb.DB
	// Blobs holds the outputs the job view inlines; nil leaves blob items
	// out (with a line in the output's errors).
	Blobs blob.Store
	// Metrics, when set, counts deliveries by result.
	Metrics *Metrics
}

// Webhooks delivers each job's terminal status to its webhook URL. It
// reads the final events (their own subjects, cf.events.*.final) from a
// durable consumer shared by every dispatcher replica: a delivery not
// acknowledged (its dispatcher died) goes to another replica after
// AckWait, and retries wait in JetStream (NAK with delay), so a restart
// loses none.
type Webhooks struct {
	cfg    WebhookConfig
	deps   WebhookDeps
	key    []byte
	guard  *ssrf.Guard
	client *http.Client
	log    *zap.Logger

	svc startstop.Service
}

// NewWebhooks builds a deliverer.
func NewWebhooks(cfg WebhookConfig, deps WebhookDeps, log *zap.Logger) (*Webhooks, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("webhooks config: %w", err)
	}
	cfg = cfg.withDefaults()
	key, _ := signingKey(cfg.Secret)
	guard, _ := webhookGuard(cfg)
	client := guard.Client()
	client.Timeout = cfg.Timeout
	if log == nil {
		log = zap.NewNop()
	}
	if deps.Blobs == nil {
		deps.Blobs = noBlobs{}
	}
	return &Webhooks{cfg: cfg, deps: deps, key: key, guard: guard, client: client, log: log.Named("webhooks")}, nil
}

// webhookGuard is the SSRF guard of webhook URLs: http is accepted (as
// RunPod does), and redirects are never followed, so a receiver cannot
// send the POST on to an address of its choice.
func webhookGuard(c WebhookConfig) (*ssrf.Guard, error) {
	return ssrf.New(ssrf.Config{Use: "webhook", Allow: c.Allow, AllowHTTP: true, AllowSetting: "WEBHOOK_ALLOW", MaxRedirects: -1})
}

// Start opens the durable consumer and delivers in the background. It
// returns once delivery runs.
func (w *Webhooks) Start(ctx context.Context) error {
	// Pull no more than can be delivered at once, so nothing ages toward
	// AckWait in a buffer.
	feed, err := w.deps.Queue.OpenFinalFeed(ctx, queue.FinalFeedConfig{AckWait: w.cfg.AckWait, MaxPending: w.cfg.Concurrency})
	if err != nil {
		return fmt.Errorf("start webhooks: %w", err)
	}
	if err := w.svc.Start(ctx, func(ctx context.Context) { w.loop(ctx, feed) }); err != nil {
		feed.Stop()
		return fmt.Errorf("start webhooks: %w", err)
	}
	return nil
}

// Stop stops pulling, cancels the deliveries in flight (they are NAKed, so
// another replica retries them at once) and waits for them.
func (w *Webhooks) Stop() {
	w.svc.Stop()
	w.guard.Close()
}

func (w *Webhooks) loop(ctx context.Context, it *queue.FinalFeed) {
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
			if ctx.Err() != nil || errors.Is(err, queue.ErrFeedClosed) {
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
func (w *Webhooks) handle(ctx context.Context, msg *queue.FeedMessage) {
	ev, err := msg.Event()
	if err != nil || ev.Type != proto.EventStatus || !ev.Status.Terminal() {
		_ = msg.Ack()
		return
	}
	seq, attempt := msg.Seq()
	target, sent, err := w.deps.DB.Webhook(ctx, ev.JobID)
	if err != nil {
		w.retryLater(ctx, msg, time.Second)
		return
	}
	if target == "" {
		_ = msg.Ack()
		return
	}
	body, mark, finished, err := w.body(ctx, ev, seq)
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
	status, err := w.post(ctx, target, id, body)
	outcome := proto.WebhookOutcome{Delivered: err == nil, Attempts: attempt, LastStatus: status}
	if err != nil {
		outcome.Error = webhookReason(err, target)
	}
	switch {
	case err == nil:
		w.count("delivered")
		w.ended(ctx, ev.JobID, mark, finished, outcome)
		_ = msg.Ack()
		w.log.Debug("delivered", zap.String("job_id", ev.JobID), zap.Int("attempt", attempt))
	case ctx.Err() != nil:
		// Stopping: hand it to another replica at once.
		_ = msg.Nak(0)
	case errors.Is(err, errPermanent):
		w.count("refused")
		w.ended(ctx, ev.JobID, mark, finished, outcome)
		_ = msg.Ack()
		w.log.Warn("webhook refused", zap.String("job_id", ev.JobID), zap.Error(err))
	case attempt > w.cfg.Retries:
		w.count("failed")
		w.ended(ctx, ev.JobID, mark, finished, outcome)
		_ = msg.Ack()
		w.log.Warn("webhook failed", zap.String("job_id", ev.JobID), zap.Int("attempts", attempt), zap.Error(err))
	default:
		w.count("retried")
		delay := w.cfg.RetryDelay << (attempt - 1)
		_ = msg.Nak(delay)
		w.log.Info("webhook failed, will retry", zap.String("job_id", ev.JobID), zap.Int("attempt", attempt), zap.Duration("delay", delay), zap.Error(err))
	}
}

func (w *Webhooks) retryLater(ctx context.Context, msg *queue.FeedMessage, d time.Duration) {
	if ctx.Err() != nil {
		_ = msg.Nak(0)
		return
	}
	_ = msg.Nak(d)
}

func (w *Webhooks) count(result string) {
	if w.deps.Metrics != nil {
		w.deps.Metrics.WebhookDeliveries.Inc(result)
	}
}

// ended records that a delivery ended: its outcome on the job's record
// (when the record still ends at finished; an expired one has none), and
// its mark, so that a duplicate of its event is not delivered again.
func (w *Webhooks) ended(ctx context.Context, jobID, mark string, finished time.Time, o proto.WebhookOutcome) {
	if !finished.IsZero() {
		if _, err := w.deps.DB.PutWebhookOutcome(ctx, jobID, finished, o); err != nil {
			w.log.Warn("record webhook outcome", zap.String("job_id", jobID), zap.Error(err))
		}
	}
	if err := w.deps.DB.MarkWebhookSent(ctx, jobID, mark); err != nil {
		w.log.Warn("mark webhook sent", zap.String("job_id", jobID), zap.Error(err))
	}
}

// body is the job's RunPod status view, as /status answers it, the
// delivery's mark: the end time of the job's record, so that duplicate
// events of one ending make one delivery, and that end time. A record
// that moved on (another terminal status won, or /retry requeued the job)
// gives mark "": nothing to deliver for this event. A record that expired
// gives the event's own view, marked by the event's sequence, and no end
// time.
func (w *Webhooks) body(ctx context.Context, ev *proto.Event, seq uint64) (body []byte, mark string, finished time.Time, err error) {
	rec, err := w.deps.DB.Get(ctx, ev.JobID)
	switch {
	case errors.Is(err, rdb.ErrNotFound):
		view := &jobview.JobView{ID: ev.JobID, Status: ev.Status, Error: ev.Error, WorkerID: ev.WorkerID}
		body, err := json.Marshal(view)
		return body, "seq" + strconv.FormatUint(seq, 10), time.Time{}, err
	case err != nil:
		return nil, "", time.Time{}, err
	case rec.Status != ev.Status:
		return nil, "", time.Time{}, nil
	}
	view, err := jobview.Build(ctx, w.deps.Blobs, rec)
	if err != nil {
		return nil, "", time.Time{}, err
	}
	view.Webhook = nil // the outcome of this very delivery is not known yet
	body, err = json.Marshal(view)
	return body, strconv.FormatInt(rec.FinishedAt.UnixMilli(), 10), rec.FinishedAt, err
}

var errPermanent = errors.New("will not retry")

// webhookReason is a delivery's error without the words the job's view
// does not need: the marker and the URL, which is the job's own.
func webhookReason(err error, target string) string {
	s := strings.TrimPrefix(err.Error(), errPermanent.Error()+": ")
	if u, perr := url.Parse(target); perr == nil {
		r := ssrf.RedactString(u.String())
		s = strings.TrimPrefix(s, "post webhook "+r+": ")
		s = strings.TrimPrefix(s, "webhook "+r+": ")
	}
	return s
}

// post delivers one body and returns the status of the answer (0 for
// none). Its errors never carry the URL's query or user info, nor anything
// the receiver sent: an answer is named by its status, a failure by its
// class.
func (w *Webhooks) post(ctx context.Context, target, id string, body []byte) (int, error) {
	u, err := url.Parse(target)
	if err != nil {
		return 0, fmt.Errorf("%w: webhook URL does not parse", errPermanent)
	}
	if err := w.guard.Check(u); err != nil {
		return 0, fmt.Errorf("%w: webhook %s: %v", errPermanent, ssrf.Redact(u), err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("%w: webhook %s: invalid URL", errPermanent, ssrf.Redact(u))
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
		var refusal *ssrf.Refusal
		if errors.As(err, &refusal) {
			return 0, fmt.Errorf("%w: webhook %s: %v", errPermanent, ssrf.Redact(u), refusal)
		}
		return 0, fmt.Errorf("post webhook %s: %s", ssrf.Redact(u), ssrf.Describe(err))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode <= 399:
		return resp.StatusCode, fmt.Errorf("post webhook %s: answered %d; webhooks do not follow redirects", ssrf.Redact(u), resp.StatusCode)
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		// Go's reason phrase, not the receiver's.
		return resp.StatusCode, fmt.Errorf("post webhook %s: answered %s", ssrf.Redact(u), strings.TrimPrefix(ssrf.Status(resp.StatusCode), "HTTP "))
	}
	return resp.StatusCode, nil
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
