package comfy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/ssrf"
)

// Config configures a Client. The zero value of every field means its
// default.
type Config struct {
	// BaseURL is ComfyUI's address; default "http://127.0.0.1:8188". A path
	// prefix (behind a reverse proxy) is kept.
	BaseURL string
	// ClientID is the WebSocket client id, also sent as client_id with every
	// prompt; default uuid.NewString().
	ClientID string
	// HTTPClient makes the HTTP calls; default a client of its own (closed
	// by Close) without an overall timeout, since View streams.
	HTTPClient *http.Client
	// Logger; nil means zap.NewNop().
	Logger *zap.Logger

	// ReconnectAttempts is how many times a dropped WebSocket is redialled
	// before the waiting prompts fail with ErrUnavailable (worker-comfyui's
	// WEBSOCKET_RECONNECT_ATTEMPTS); default 5, negative means none. The
	// client keeps redialling after that, every MaxReconnectDelay or at
	// once when Submit needs the connection.
	ReconnectAttempts int
	// ReconnectDelay is the first delay before a redial, doubled after each
	// failure (worker-comfyui's WEBSOCKET_RECONNECT_DELAY_S); default 3s.
	ReconnectDelay time.Duration
	// MaxReconnectDelay caps the doubling; default 30s (or ReconnectDelay
	// when that is larger).
	MaxReconnectDelay time.Duration
	// HistoryPollInterval is how often a waiting prompt reconciles through
	// /history and /queue even when the WebSocket is quiet, a safety net
	// against lost messages; default 5s, negative disables it.
	HistoryPollInterval time.Duration
	// PingInterval is how often the WebSocket is pinged; default 20s.
	PingInterval time.Duration
	// ReadTimeout is how long the WebSocket may stay silent (no frame, no
	// pong) before it is considered dead; default 3 × PingInterval.
	ReadTimeout time.Duration
	// DialTimeout bounds the WebSocket handshake and the wait for the first
	// status message; default 10s.
	DialTimeout time.Duration
	// RequestTimeout bounds each JSON call (not UploadImage and View, which
	// stream); default 30s, negative means none.
	RequestTimeout time.Duration
}

const (
	defaultBaseURL     = "http://127.0.0.1:8188"
	maxErrBody         = 4 << 20   // bytes of an error body kept
	maxJSONBody        = 256 << 20 // bytes of a JSON answer read
	wsReadLimit        = 512 << 20 // bytes of one WebSocket frame (SaveImageWebsocket sends full PNGs)
	wsWriteTimeout     = 5 * time.Second
	maxQueuedPreviews  = 16
	maxQueuedProgress  = 1024
	historyRetryBudget = 2 * time.Second
)

// Validate checks the configuration and names the first bad field.
func (c Config) Validate() error {
	if c.BaseURL != "" {
		u, err := url.Parse(c.BaseURL)
		if err != nil {
			return fmt.Errorf("BaseURL %q: %w", c.BaseURL, err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("BaseURL %q: want http(s)://host[:port]", c.BaseURL)
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("BaseURL %q: no query or fragment allowed", c.BaseURL)
		}
	}
	for name, d := range map[string]time.Duration{
		"ReconnectDelay": c.ReconnectDelay, "MaxReconnectDelay": c.MaxReconnectDelay,
		"PingInterval": c.PingInterval, "ReadTimeout": c.ReadTimeout, "DialTimeout": c.DialTimeout,
	} {
		if d < 0 {
			return fmt.Errorf("%s %v: must not be negative", name, d)
		}
	}
	if c.PingInterval > 0 && c.ReadTimeout > 0 && c.ReadTimeout <= c.PingInterval {
		return fmt.Errorf("ReadTimeout %v: must exceed PingInterval %v", c.ReadTimeout, c.PingInterval)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.BaseURL == "" {
		c.BaseURL = defaultBaseURL
	}
	if c.ClientID == "" {
		c.ClientID = uuid.NewString()
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.ReconnectAttempts == 0 {
		c.ReconnectAttempts = 5
	} else if c.ReconnectAttempts < 0 {
		c.ReconnectAttempts = 0
	}
	if c.ReconnectDelay == 0 {
		c.ReconnectDelay = 3 * time.Second
	}
	if c.MaxReconnectDelay == 0 {
		c.MaxReconnectDelay = 30 * time.Second
	}
	c.MaxReconnectDelay = max(c.MaxReconnectDelay, c.ReconnectDelay)
	if c.HistoryPollInterval == 0 {
		c.HistoryPollInterval = 5 * time.Second
	}
	if c.PingInterval == 0 {
		c.PingInterval = 20 * time.Second
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = 3 * c.PingInterval
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 30 * time.Second
	}
	return c
}

// connState is the WebSocket's state.
type connState int

const (
	stateNew          connState = iota // Start not called (or it failed)
	stateConnected                     // the socket is up
	stateReconnecting                  // dropped; redialling within ReconnectAttempts
	stateDown                          // attempts used up; waiters failed with ErrUnavailable
	stateClosed                        // Close called or the Start context ended
)

// Client talks to one ComfyUI. It is safe for concurrent use; several
// prompts may wait at the same time.
type Client struct {
	cfg     Config
	base    *url.URL
	wsURL   string
	http    *http.Client
	ownHTTP bool
	log     *zap.Logger

	mu       sync.Mutex
	state    connState
	changed  chan struct{} // closed and replaced on every state change or failed redial
	lastErr  error         // why the socket is not connected
	starting bool
	cancel   context.CancelFunc // stops the loop
	done     chan struct{}      // closed when the loop has stopped
	kick     chan struct{}      // asks a down loop to redial now
	waiters  map[string]*waiter
	current  string // the prompt of ours that ComfyUI is executing, for type-1 previews
	// drops counts the times the WebSocket went down: a prompt whose end
	// was seen before a drop and whose history is missing after it was
	// lost with a ComfyUI restart, not evicted.
	drops uint64
}

// New builds a Client; it does not contact ComfyUI (Start does).
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("comfy config: %w", err)
	}
	cfg = cfg.withDefaults()
	base, err := url.Parse(strings.TrimRight(cfg.BaseURL, "/"))
	if err != nil {
		return nil, fmt.Errorf("comfy config: BaseURL %q: %w", cfg.BaseURL, err)
	}
	ws := *base
	ws.Scheme = "ws"
	if base.Scheme == "https" {
		ws.Scheme = "wss"
	}
	ws.Path += "/ws"
	ws.RawQuery = url.Values{"clientId": {cfg.ClientID}}.Encode()

	c := &Client{
		cfg:     cfg,
		base:    base,
		wsURL:   ws.String(),
		http:    cfg.HTTPClient,
		log:     cfg.Logger.Named("comfy"),
		changed: make(chan struct{}),
		kick:    make(chan struct{}, 1),
		waiters: map[string]*waiter{},
	}
	if c.http == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 8
		c.http = &http.Client{Transport: tr}
		c.ownHTTP = true
	}
	return c, nil
}

// ClientID is the WebSocket client id.
func (c *Client) ClientID() string { return c.cfg.ClientID }

// BaseURL is ComfyUI's address.
func (c *Client) BaseURL() string { return c.base.String() }

// Connected reports whether the WebSocket is up.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == stateConnected
}

// Start dials the WebSocket, waits for ComfyUI's first status message and
// hands the socket to a background loop. It returns once connected, or
// with the dial error (matching ErrUnavailable), after which Start may be
// called again. ctx bounds the first dial and the loop's life: cancelling
// it stops the loop like Close does.
func (c *Client) Start(ctx context.Context) error {
	c.mu.Lock()
	switch {
	case c.state == stateClosed:
		c.mu.Unlock()
		return ErrClosed
	case c.state != stateNew || c.starting:
		c.mu.Unlock()
		return errors.New("start comfy client: already started")
	}
	c.starting = true
	loopCtx, cancel := context.WithCancel(ctx)
	c.cancel = cancel
	c.mu.Unlock()

	conn, err := c.dial(loopCtx)

	c.mu.Lock()
	defer c.mu.Unlock()
	c.starting = false
	if c.state == stateClosed {
		cancel()
		if conn != nil {
			_ = conn.Close()
		}
		return ErrClosed
	}
	if err != nil {
		cancel()
		c.cancel = nil
		return fmt.Errorf("start comfy client: %w", err)
	}
	c.done = make(chan struct{})
	c.setStateLocked(stateConnected, nil)
	go c.run(loopCtx, conn, c.done)
	c.log.Debug("connected", zap.String("url", c.wsURL))
	return nil
}

// Close stops the loop and closes the WebSocket; prompts still waiting
// fail with ErrClosed. It is idempotent, blocks until the loop has stopped
// and is safe without Start. The prompts themselves keep running in
// ComfyUI. HTTP calls still work after Close, except with the default
// HTTP client, whose idle connections Close drops (new ones are opened).
func (c *Client) Close() error {
	c.mu.Lock()
	if c.state != stateClosed {
		c.setStateLocked(stateClosed, ErrClosed)
	}
	cancel, done := c.cancel, c.done
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if done != nil {
		<-done
	}
	if c.ownHTTP {
		c.http.CloseIdleConnections()
	}
	return nil
}

// setStateLocked records a state change and wakes everyone waiting on one.
func (c *Client) setStateLocked(s connState, err error) {
	if c.state == stateConnected && s != stateConnected {
		c.drops++
	}
	c.state = s
	c.lastErr = err
	close(c.changed)
	c.changed = make(chan struct{})
}

// awaitConnected waits until the WebSocket is up. While it is being
// redialled it waits (bounded by ctx); when it is down it asks for one
// immediate redial and fails with ErrUnavailable if that fails too.
func (c *Client) awaitConnected(ctx context.Context) error {
	kicked := false
	for {
		c.mu.Lock()
		state, changed, lastErr := c.state, c.changed, c.lastErr
		c.mu.Unlock()
		switch state {
		case stateConnected:
			return nil
		case stateNew:
			return ErrNotStarted
		case stateClosed:
			return ErrClosed
		case stateDown:
			if kicked {
				return lastErr
			}
			kicked = true
			select {
			case c.kick <- struct{}{}:
			default:
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("wait for websocket: %w (last error: %v)", ctx.Err(), lastErr)
			}
			return fmt.Errorf("wait for websocket: %w", ctx.Err())
		}
	}
}

// endpoint returns the URL of escapedPath (already path-escaped, e.g.
// "/history/"+url.PathEscape(id)) and query under the base URL.
func (c *Client) endpoint(escapedPath string, query url.Values) string {
	u := *c.base
	raw := c.base.EscapedPath() + escapedPath
	if p, err := url.PathUnescape(raw); err == nil {
		u.Path, u.RawPath = p, raw
	}
	if query != nil {
		u.RawQuery = query.Encode()
	}
	return u.String()
}

// do sends req. A transport failure is ErrUnavailable unless ctx ended; a
// non-2xx answer is a *StatusError (its body read and closed).
func (c *Client) do(ctx context.Context, req *http.Request) (*http.Response, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, &transportError{method: req.Method, path: req.URL.Path, err: err})
	}
	if resp.StatusCode/100 != 2 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrBody))
		_ = resp.Body.Close()
		return nil, &StatusError{Method: req.Method, URL: req.URL.String(), StatusCode: resp.StatusCode, Body: body}
	}
	return resp, nil
}

// call makes one JSON call bounded by RequestTimeout and returns the body
// of the 2xx answer. A nil body sends no body.
func (c *Client) call(ctx context.Context, method, path string, query url.Values, body []byte) ([]byte, error) {
	rctx := ctx
	if c.cfg.RequestTimeout > 0 {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(ctx, c.cfg.RequestTimeout)
		defer cancel()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(rctx, method, c.endpoint(path, query), rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxJSONBody))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("read answer: %w: %w", ErrUnavailable, ssrf.WithoutAddresses(err))
	}
	return data, nil
}
