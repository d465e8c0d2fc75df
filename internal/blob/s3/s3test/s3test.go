package s3test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"go/build"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/blob/s3"
)

// Version is the versitygw release the tests are written against.
const Version = "v1.8.0"

// InstallHint says how to get the binary.
const InstallHint = "go install github.com/versity/versitygw/cmd/versitygw@" + Version + " (or run `make test`, which does it)"

// Binary finds the versitygw executable: $VERSITYGW, PATH, then $GOBIN
// and $(go env GOPATH)/bin.
func Binary() (string, error) {
	if p := os.Getenv("VERSITYGW"); p != "" {
		if st, err := os.Stat(p); err != nil || st.IsDir() {
			return "", fmt.Errorf("versitygw not found at VERSITYGW=%s; install it with %s", p, InstallHint)
		}
		return p, nil
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	dirs := filepath.SplitList(build.Default.GOPATH)
	for i, d := range dirs {
		dirs[i] = filepath.Join(d, "bin")
	}
	if gobin := os.Getenv("GOBIN"); gobin != "" {
		dirs = append([]string{gobin}, dirs...)
	}
	for _, dir := range dirs {
		p := filepath.Join(dir, "versitygw")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("versitygw not found on PATH or in GOPATH/bin; install it with %s", InstallHint)
}

// Server is a running versitygw.
type Server struct {
	// Endpoint is http://127.0.0.1:<port>.
	Endpoint  string
	AccessKey string
	SecretKey string
	Region    string
	// Dir is the posix backend's root: one directory per bucket.
	Dir string

	cmd    *exec.Cmd
	exited chan struct{}
	log    *os.File
}

// Start launches versitygw and waits until it answers.
func Start() (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 3 { // the port picked may be taken before versitygw binds it
		srv, err := start(bin)
		if err == nil {
			return srv, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func start(bin string) (*Server, error) {
	base := os.TempDir()
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		base = "/dev/shm" // tmpfs: large test objects cost no disk time
	}
	dir, err := os.MkdirTemp(base, "versitygw-")
	if err != nil {
		return nil, fmt.Errorf("versitygw: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("versitygw: pick a port: %w", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	log, err := os.Create(filepath.Join(dir, ".versitygw.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("versitygw: %w", err)
	}
	s := &Server{Endpoint: "http://" + addr, AccessKey: "comfyfleet-test", SecretKey: randHex(16), Region: "us-east-1",
		Dir: filepath.Join(dir, "data"), exited: make(chan struct{}), log: log}
	if err := os.Mkdir(s.Dir, 0o755); err != nil {
		log.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("versitygw: %w", err)
	}
	s.cmd = exec.Command(bin, "--port", addr, "--region", s.Region, "--quiet", "posix", s.Dir)
	s.cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		log.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("versitygw: start %s: %w", bin, err)
	}
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	if err := s.waitReady(15 * time.Second); err != nil {
		out, _ := os.ReadFile(log.Name())
		s.Stop()
		return nil, fmt.Errorf("versitygw at %s: %w; its log: %s", addr, err, strings.TrimSpace(string(out)))
	}
	return s, nil
}

func (s *Server) waitReady(limit time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-s.exited:
			return errors.New("exited before it answered")
		default:
		}
		resp, err := client.Get(s.Endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return nil // any HTTP answer (403 without credentials) means it serves
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer within %v: %w", limit, err)
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-s.exited:
			t.Stop()
		case <-t.C:
		}
	}
}

// Stop kills the process (the one this package started, by its pid) and
// removes its data. It is idempotent.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		select {
		case <-s.exited:
		default:
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	}
	if s.log != nil {
		s.log.Close()
	}
	os.RemoveAll(filepath.Dir(s.Dir))
}

// Config is an s3.Config for a bucket of this server.
func (s *Server) Config(bucket string) s3.Config {
	return s3.Config{Endpoint: s.Endpoint, Region: s.Region, AccessKeyID: s.AccessKey, SecretAccessKey: s.SecretKey,
		Bucket: bucket, Addressing: s3.AddressingPath}
}

// Bucket creates a fresh bucket for a test and returns its name.
func (s *Server) Bucket(t testing.TB) string {
	t.Helper()
	name := "t-" + randHex(8)
	st, err := s3.New(s.Config(name))
	if err != nil {
		t.Fatalf("s3test: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := st.EnsureBucket(ctx); err != nil {
		t.Fatalf("s3test: create bucket %s: %v", name, err)
	}
	return name
}

// Lazy starts one server for a test package on first use. Stop it from
// TestMain after m.Run.
type Lazy struct {
	once sync.Once
	srv  *Server
	err  error
}

// Get returns the package's server, starting it on first use; a server
// that cannot start fails the test.
func (l *Lazy) Get(t testing.TB) *Server {
	t.Helper()
	l.once.Do(func() { l.srv, l.err = Start() })
	if l.err != nil {
		t.Fatalf("s3test: %v", l.err)
	}
	return l.srv
}

// Stop stops the server if it was started.
func (l *Lazy) Stop() {
	l.once.Do(func() {}) // no start after Stop
	if l.srv != nil {
		l.srv.Stop()
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
