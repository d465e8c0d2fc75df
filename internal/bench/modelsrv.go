package bench

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// modelServer is the loopback file server of mixed-models by URL: it
// serves small stand-ins of checkpoints (with ETag and Range, as a real
// host does) and counts the GETs and the full downloads it answered.
type modelServer struct {
	srv   *http.Server
	ln    net.Listener
	files map[string][]byte // by path

	mu   sync.Mutex
	gets int
	full int
}

// modelFileSize is the size of a served checkpoint: the count matters,
// not the bytes.
const modelFileSize = 4 << 10

// startModelServer serves a file at "/"+name for each of names on
// 127.0.0.1.
func startModelServer(names []string) (*modelServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("model file server: %w", err)
	}
	m := &modelServer{ln: ln, files: map[string][]byte{}}
	for _, n := range names {
		m.files["/"+n] = modelBytes(n, modelFileSize)
	}
	m.srv = &http.Server{Handler: http.HandlerFunc(m.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = m.srv.Serve(ln) }()
	return m, nil
}

// modelBytes is n bytes that depend on seed.
func modelBytes(seed string, n int) []byte {
	out := make([]byte, 0, n+sha256.Size)
	for i := 0; len(out) < n; i++ {
		h := sha256.Sum256(fmt.Appendf(nil, "%s-%d", seed, i))
		out = append(out, h[:]...)
	}
	return out[:n]
}

// hostport is the server's "127.0.0.1:port", for MODEL_URL_ALLOW.
func (m *modelServer) hostport() string { return m.ln.Addr().String() }

// url is the URL of the file name.
func (m *modelServer) url(name string) string { return "http://" + m.hostport() + "/" + name }

// counts returns the GETs and the full downloads so far and sets them
// back to zero.
func (m *modelServer) counts() (gets, full int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	gets, full = m.gets, m.full
	m.gets, m.full = 0, 0
	return gets, full
}

func (m *modelServer) close() { _ = m.srv.Close() }

func (m *modelServer) serve(w http.ResponseWriter, r *http.Request) {
	data, ok := m.files[r.URL.Path]
	if r.Method == http.MethodGet {
		m.mu.Lock()
		m.gets++
		m.mu.Unlock()
	}
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("ETag", fmt.Sprintf(`"%x"`, sha256.Sum256(data)))
	cw := &countingWriter{ResponseWriter: w}
	http.ServeContent(cw, r, strings.TrimPrefix(r.URL.Path, "/"), time.Time{}, bytes.NewReader(data))
	if r.Method == http.MethodGet && r.Header.Get("Range") == "" && cw.n == int64(len(data)) {
		m.mu.Lock()
		m.full++
		m.mu.Unlock()
	}
}

// countingWriter counts the body bytes written.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}
