package trace

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/draw"
	"image/jpeg"
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Trace is one recorded scenario.
type Trace struct {
	Scenario string `json:"scenario"`
	Doc      string `json:"doc"`
	// ComfyUI names the server the trace was recorded from.
	ComfyUI Source `json:"comfyui"`
	Steps   []Step `json:"steps"`
}

// Source is the server a trace came from.
type Source struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
}

// Step is one action of a scenario (exactly one of Connect, Request, Wait)
// and what the server did in answer to it.
type Step struct {
	Connect *Connect `json:"connect,omitempty"`
	Request *Request `json:"request,omitempty"`
	Wait    *Wait    `json:"wait,omitempty"`

	// Response is the answer to Request.
	Response *Response `json:"response,omitempty"`
	// Frames are the frames Connect or Wait consumed from its socket, in
	// order: for Connect the first one, for Wait every frame up to and
	// including the one it waited for.
	Frames []Frame `json:"frames,omitempty"`
}

// Connect opens a WebSocket to /ws.
type Connect struct {
	// Socket names the socket for later Waits.
	Socket string `json:"socket"`
	// ClientID is the clientId query parameter; empty means none.
	ClientID string `json:"client_id,omitempty"`
	// FeatureFlags, when set, is sent as the first message
	// ({"type": "feature_flags", "data": ...}).
	FeatureFlags json.RawMessage `json:"feature_flags,omitempty"`
}

// Request is one HTTP request.
type Request struct {
	Method string `json:"method"`
	// Path is the path and query.
	Path string `json:"path"`
	// JSON is a JSON body; Raw a body sent as it is (text/plain), Upload a
	// multipart form. At most one is set.
	JSON   json.RawMessage `json:"json,omitempty"`
	Raw    *string         `json:"raw,omitempty"`
	Upload *Upload         `json:"upload,omitempty"`
	// UntilNonEmpty repeats the request until its answer is a non-empty
	// JSON object (history of a prompt that has just finished).
	UntilNonEmpty bool `json:"until_nonempty,omitempty"`
}

// Upload is a multipart form: one file and plain fields.
type Upload struct {
	Field       string            `json:"field"`
	Filename    string            `json:"filename"`
	ContentType string            `json:"content_type"`
	Data        []byte            `json:"data"`
	Fields      map[string]string `json:"fields,omitempty"`
}

// Wait reads frames from a socket until one matches.
type Wait struct {
	Socket string `json:"socket"`
	// Type is the message type of the frame waited for ("executing",
	// "status", ...; "binary" for a binary frame).
	Type string `json:"type"`
	// Node, when set, must equal data.node ("null" for None).
	Node string `json:"node,omitempty"`
	// QueueRemaining, when set, must equal a status frame's queue_remaining.
	QueueRemaining *int `json:"queue_remaining,omitempty"`
	// Value, when set, must equal a progress frame's value.
	Value *int `json:"value,omitempty"`
}

// Response is an HTTP answer, normalised.
type Response struct {
	Status      int    `json:"status"`
	ContentType string `json:"content_type,omitempty"`
	// JSON is the body when it is JSON.
	JSON any `json:"json,omitempty"`
	// Text is the body when it is short text that is not JSON.
	Text *string `json:"text,omitempty"`
	// Image describes a PNG or JPEG body.
	Image *Image `json:"image,omitempty"`
	// Length and SHA256 describe any other body.
	Length int    `json:"length,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
}

// Image is a decoded picture: its format, size and, for small ones, its
// RGBA pixels.
type Image struct {
	Format string `json:"format"`
	Width  int    `json:"width"`
	Height int    `json:"height"`
	// Pixels are the RGBA bytes, row by row, of an image of at most
	// maxPixels pixels.
	Pixels []byte `json:"pixels,omitempty"`
}

const maxPixels = 64 * 64

// Frame is one WebSocket frame: a JSON message or a binary one.
type Frame struct {
	Type string `json:"type"`
	Data any    `json:"data,omitempty"`
	// Binary describes a binary frame (Type "binary").
	Binary *Binary `json:"binary,omitempty"`
}

// Binary is a binary frame: its event type, for previews the image type and
// picture, for PREVIEW_IMAGE_WITH_METADATA the metadata, for TEXT the node
// and the text.
type Binary struct {
	Event     uint32 `json:"event"`
	ImageType uint32 `json:"image_type,omitempty"`
	Metadata  any    `json:"metadata,omitempty"`
	Image     *Image `json:"image,omitempty"`
	// Node and Text are a TEXT frame's (3).
	Node   string `json:"node,omitempty"`
	Text   string `json:"text,omitempty"`
	Length int    `json:"length"`
}

// timeout bounds one wait or one polled request.
const timeout = 60 * time.Second

// Play runs steps against the ComfyUI at baseURL and returns them with
// their answers and frames filled in, normalised. The server should be in
// the state the trace expects (see Scenarios).
func Play(ctx context.Context, baseURL string, steps []Step) ([]Step, error) {
	p := &player{base: strings.TrimRight(baseURL, "/"), sockets: map[string]*socket{}, norm: newNormaliser()}
	defer p.close()
	out := make([]Step, len(steps))
	for k, st := range steps {
		st.Response, st.Frames = nil, nil
		var err error
		switch {
		case st.Connect != nil:
			st.Frames, err = p.connect(ctx, st.Connect)
		case st.Request != nil:
			st.Response, err = p.request(ctx, st.Request)
		case st.Wait != nil:
			st.Frames, err = p.wait(ctx, st.Wait)
		default:
			err = errors.New("step has no connect, request or wait")
		}
		if err != nil {
			return out[:k], fmt.Errorf("step %d: %w", k, err)
		}
		out[k] = st
	}
	return out, nil
}

type player struct {
	base    string
	sockets map[string]*socket
	norm    *normaliser
	client  http.Client
}

type socket struct {
	conn   *websocket.Conn
	mu     sync.Mutex
	frames []Frame
	err    error
	signal chan struct{} // a frame arrived or the socket failed
}

func (p *player) close() {
	for _, s := range p.sockets {
		_ = s.conn.Close()
	}
}

func (p *player) connect(ctx context.Context, c *Connect) ([]Frame, error) {
	if _, dup := p.sockets[c.Socket]; dup {
		return nil, fmt.Errorf("socket %q is open already", c.Socket)
	}
	u := "ws" + strings.TrimPrefix(p.base, "http") + "/ws"
	if c.ClientID != "" {
		u += "?clientId=" + url.QueryEscape(c.ClientID)
		p.norm.clients[c.ClientID] = true
	}
	conn, resp, err := websocket.DefaultDialer.DialContext(ctx, u, nil)
	if err != nil {
		return nil, fmt.Errorf("open websocket %s: %w", u, err)
	}
	resp.Body.Close()
	s := &socket{conn: conn, signal: make(chan struct{}, 1)}
	p.sockets[c.Socket] = s
	go p.read(s)
	// The first frame (status with the sid) comes before anything sent.
	first, err := p.waitFor(ctx, s, func(Frame) bool { return true })
	if err != nil {
		return nil, err
	}
	if len(c.FeatureFlags) > 0 {
		msg := fmt.Sprintf(`{"type": "feature_flags", "data": %s}`, c.FeatureFlags)
		if err := conn.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			return nil, fmt.Errorf("send feature_flags: %w", err)
		}
	}
	return first, nil
}

func (p *player) read(s *socket) {
	for {
		typ, data, err := s.conn.ReadMessage()
		s.mu.Lock()
		if err != nil {
			s.err = err
		} else if typ == websocket.BinaryMessage {
			s.frames = append(s.frames, decodeBinary(data))
		} else {
			s.frames = append(s.frames, p.decodeText(data))
		}
		s.mu.Unlock()
		select {
		case s.signal <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
	}
}

func (p *player) decodeText(data []byte) Frame {
	var msg struct {
		Type string `json:"type"`
		Data any    `json:"data"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&msg); err != nil {
		return Frame{Type: "invalid-json", Data: string(data)}
	}
	return Frame{Type: msg.Type, Data: p.norm.frame(msg.Type, msg.Data)}
}

// decodeBinary splits a binary frame: a big-endian event type, then for
// PREVIEW_IMAGE (1) the image type and the picture, for
// PREVIEW_IMAGE_WITH_METADATA (4) the metadata's length, the metadata and
// the picture.
func decodeBinary(data []byte) Frame {
	b := &Binary{Length: len(data)}
	if len(data) >= 4 {
		b.Event = binary.BigEndian.Uint32(data)
		rest := data[4:]
		switch b.Event {
		case 1, 2:
			if len(rest) >= 4 {
				b.ImageType = binary.BigEndian.Uint32(rest)
				b.Image = describeImage(rest[4:], false)
			}
		case 3:
			// TEXT: the node id's length, the node id, the text.
			if len(rest) >= 4 {
				n := int(binary.BigEndian.Uint32(rest))
				if 4+n <= len(rest) {
					b.Node = string(rest[4 : 4+n])
					b.Text = string(rest[4+n:])
				}
			}
		case 4:
			if len(rest) >= 4 {
				n := int(binary.BigEndian.Uint32(rest))
				if 4+n <= len(rest) {
					var meta any
					dec := json.NewDecoder(bytes.NewReader(rest[4 : 4+n]))
					dec.UseNumber()
					if dec.Decode(&meta) == nil {
						b.Metadata = meta
					}
					b.Image = describeImage(rest[4+n:], false)
				}
			}
		}
	}
	return Frame{Type: "binary", Binary: b}
}

func (p *player) wait(ctx context.Context, w *Wait) ([]Frame, error) {
	s, ok := p.sockets[w.Socket]
	if !ok {
		return nil, fmt.Errorf("wait on socket %q that was never opened", w.Socket)
	}
	return p.waitFor(ctx, s, w.matches)
}

func (w *Wait) matches(f Frame) bool {
	if f.Type != w.Type {
		return false
	}
	d, _ := f.Data.(map[string]any)
	if w.Node != "" {
		n, present := d["node"]
		if !present {
			return false
		}
		if w.Node == "null" {
			if n != nil {
				return false
			}
		} else if n != w.Node {
			return false
		}
	}
	if w.QueueRemaining != nil {
		st, _ := d["status"].(map[string]any)
		ei, _ := st["exec_info"].(map[string]any)
		if fmt.Sprint(ei["queue_remaining"]) != fmt.Sprint(*w.QueueRemaining) {
			return false
		}
	}
	if w.Value != nil && fmt.Sprint(d["value"]) != fmt.Sprint(*w.Value) {
		return false
	}
	return true
}

// waitFor consumes frames until one matches and returns them all.
func (p *player) waitFor(ctx context.Context, s *socket, match func(Frame) bool) ([]Frame, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var got []Frame
	for {
		s.mu.Lock()
		for len(s.frames) > 0 {
			f := s.frames[0]
			s.frames = s.frames[1:]
			got = append(got, f)
			if match(f) {
				s.mu.Unlock()
				return got, nil
			}
		}
		err := s.err
		s.mu.Unlock()
		if err != nil {
			return got, fmt.Errorf("socket closed while waiting (after %d frames): %w", len(got), err)
		}
		select {
		case <-s.signal:
		case <-deadline.C:
			return got, fmt.Errorf("no matching frame in %s (got %d frames: %s)", timeout, len(got), frameTypes(got))
		case <-ctx.Done():
			return got, ctx.Err()
		}
	}
}

func frameTypes(fs []Frame) string {
	var ts []string
	for _, f := range fs {
		ts = append(ts, f.Type)
	}
	return strings.Join(ts, ",")
}

func (p *player) request(ctx context.Context, r *Request) (*Response, error) {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := p.once(ctx, r)
		if err != nil {
			return nil, err
		}
		if !r.UntilNonEmpty {
			return resp, nil
		}
		if m, ok := resp.JSON.(map[string]any); ok && len(m) > 0 {
			return resp, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s %s: still empty after %s", r.Method, r.Path, timeout)
		}
		pause := time.NewTimer(50 * time.Millisecond)
		select {
		case <-pause.C:
		case <-ctx.Done():
			pause.Stop()
			return nil, ctx.Err()
		}
	}
}

func (p *player) once(ctx context.Context, r *Request) (*Response, error) {
	var body io.Reader
	ctype := ""
	switch {
	case r.JSON != nil:
		body, ctype = bytes.NewReader(r.JSON), "application/json"
	case r.Raw != nil:
		body, ctype = strings.NewReader(*r.Raw), "text/plain"
	case r.Upload != nil:
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		for _, k := range sortedKeys(r.Upload.Fields) {
			_ = mw.WriteField(k, r.Upload.Fields[k])
		}
		h := make(map[string][]string)
		h["Content-Disposition"] = []string{fmt.Sprintf(`form-data; name=%q; filename=%q`, r.Upload.Field, r.Upload.Filename)}
		h["Content-Type"] = []string{r.Upload.ContentType}
		fw, err := mw.CreatePart(h)
		if err != nil {
			return nil, err
		}
		_, _ = fw.Write(r.Upload.Data)
		_ = mw.Close()
		body, ctype = &buf, mw.FormDataContentType()
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, p.base+r.Path, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", r.Method, r.Path, err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", r.Method, r.Path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: read answer: %w", r.Method, r.Path, err)
	}
	out := &Response{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type")}
	mt := strings.TrimSpace(strings.Split(out.ContentType, ";")[0])
	switch {
	case mt == "application/json":
		var v any
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%s %s: answer is not JSON: %w", r.Method, r.Path, err)
		}
		out.JSON = p.norm.response(r, v)
	case mt == "image/png" || mt == "image/jpeg":
		out.Image = describeImage(data, true)
		if out.Image == nil {
			out.Length, out.SHA256 = len(data), fmt.Sprintf("%x", sha256.Sum256(data))
		}
	case len(data) <= 4096 && isText(data):
		s := string(data)
		out.Text = &s
	default:
		out.Length, out.SHA256 = len(data), fmt.Sprintf("%x", sha256.Sum256(data))
	}
	return out, nil
}

func isText(b []byte) bool {
	for _, c := range b {
		if c < 0x20 && c != '\n' && c != '\r' && c != '\t' {
			return false
		}
	}
	return true
}

// describeImage decodes a PNG or JPEG; pixels are kept for small pictures
// when withPixels.
func describeImage(data []byte, withPixels bool) *Image {
	var img image.Image
	var err error
	format := ""
	switch {
	case bytes.HasPrefix(data, []byte("\x89PNG")):
		format = "png"
		img, err = png.Decode(bytes.NewReader(data))
	case bytes.HasPrefix(data, []byte{0xff, 0xd8}):
		format = "jpeg"
		img, err = jpeg.Decode(bytes.NewReader(data))
	default:
		return nil
	}
	if err != nil {
		return &Image{Format: format + " (undecodable)"}
	}
	b := img.Bounds()
	out := &Image{Format: format, Width: b.Dx(), Height: b.Dy()}
	if withPixels && b.Dx()*b.Dy() <= maxPixels {
		rgba := image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
		draw.Draw(rgba, rgba.Bounds(), img, b.Min, draw.Src)
		out.Pixels = rgba.Pix
	}
	return out
}

// Encode writes a trace as indented JSON.
func Encode(t *Trace) ([]byte, error) {
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Decode reads a trace written by Encode, keeping numbers as json.Number.
func Decode(data []byte) (*Trace, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	dec.DisallowUnknownFields()
	var t Trace
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("decode trace: %w", err)
	}
	if t.Scenario == "" {
		return nil, errors.New("decode trace: no scenario name")
	}
	for k, st := range t.Steps {
		n := 0
		for _, set := range []bool{st.Connect != nil, st.Request != nil, st.Wait != nil} {
			if set {
				n++
			}
		}
		if n != 1 {
			return nil, fmt.Errorf("decode trace %s: step %d has %d actions, want one of connect, request, wait", t.Scenario, k, n)
		}
	}
	return &t, nil
}
