package testenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisTLS is a test's own redis-server that speaks TLS only, with an ACL
// user; cleanup stops it.
type RedisTLS struct {
	// Addr is host:port of the TLS port.
	Addr string
	// User and Password are the ACL user's, allowed every command and key.
	User, Password string
}

// StartRedisTLS runs redis-server (found on PATH, as scripts/ensure-redis.sh
// installs it; the test fails without one) with TLS on a free port, no
// plain port, certificates of pki, and clientCerts as its
// tls-auth-clients ("yes", "optional" or "no").
func StartRedisTLS(t testing.TB, pki *PKI, clientCerts string) *RedisTLS {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is not on PATH (scripts/ensure-redis.sh installs it): %v", err)
	}
	addr := FreeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	r := &RedisTLS{Addr: addr, User: "fleet", Password: "s3cret-" + randHex(4)}
	logFile := filepath.Join(t.TempDir(), "redis.log")
	out, err := os.Create(logFile)
	if err != nil {
		t.Fatalf("redis-server log: %v", err)
	}
	defer out.Close()
	cmd := exec.Command(bin, "--port", "0", "--tls-port", port, "--bind", "127.0.0.1",
		"--tls-cert-file", pki.ServerCert, "--tls-key-file", pki.ServerKey, "--tls-ca-cert-file", pki.CA,
		"--tls-auth-clients", clientCerts, "--save", "", "--appendonly", "no", "--dir", t.TempDir(),
		"--user", "default", "off",
		"--user", r.User, "on", ">"+r.Password, "~*", "&*", "+@all")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	// Ready once an authenticated TLS PING answers.
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(pki.CA)
	if err != nil || !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("read CA %s: %v", pki.CA, err)
	}
	cert, err := tls.LoadX509KeyPair(pki.ClientCert, pki.ClientKey)
	if err != nil {
		t.Fatalf("load client certificate: %v", err)
	}
	c := redis.NewClient(&redis.Options{Addr: addr, Username: r.User, Password: r.Password, MaxRetries: -1,
		TLSConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return r
		}
		select {
		case werr := <-exited:
			t.Fatalf("redis-server exited (%v): %s", werr, readLog(logFile))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server with TLS did not answer in 10s: %v\n%s", err, readLog(logFile))
		}
	}
}

// URL is the rediss:// URL of the ACL user, database db.
func (r *RedisTLS) URL(db int) string {
	return fmt.Sprintf("rediss://%s:%s@%s/%d", r.User, r.Password, strings.TrimSpace(r.Addr), db)
}

func readLog(path string) string {
	data, _ := os.ReadFile(path)
	return string(data)
}
