package testenv

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comfyfleet/comfyfleet/internal/natsserver"
)

// Cluster is a test's own NATS cluster with clustered JetStream: nodes on
// loopback, each with its own client port, route port and store, that a
// test may stop and start again (same ports, same store).
type Cluster struct {
	t     testing.TB
	name  string
	nodes []*clusterNode
}

type clusterNode struct {
	name       string
	clientPort int
	routePort  int
	dir        string

	mu  sync.Mutex
	srv *natsserver.Server
}

// StartNATSCluster starts an n-node cluster and waits until its
// JetStream has a meta leader (streams can be created); cleanup stops
// every node.
func StartNATSCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t, name: "cf-test-" + randHex(4)}
	var routes []string
	for i := range n {
		node := &clusterNode{name: fmt.Sprintf("n%d", i+1), clientPort: freePort(t), routePort: freePort(t), dir: t.TempDir()}
		c.nodes = append(c.nodes, node)
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", node.routePort))
	}
	errs := make(chan error, n)
	for _, node := range c.nodes {
		// The nodes start together: each waits for clients only, and
		// JetStream's meta group forms once they see each other.
		go func() { errs <- c.start(node, routes) }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("start nats cluster: %v", err)
		}
	}
	t.Cleanup(func() {
		for i := range c.nodes {
			c.Stop(i)
		}
	})
	c.WaitReady()
	return c
}

func (c *Cluster) start(node *clusterNode, routes []string) error {
	srv, err := natsserver.Start(natsserver.Config{Port: node.clientPort, StoreDir: node.dir, ReadyTimeout: 30 * time.Second,
		Cluster: &natsserver.Cluster{Name: c.name, ServerName: node.name, Port: node.routePort, Routes: routes}})
	if err != nil {
		return fmt.Errorf("node %s: %w", node.name, err)
	}
	node.mu.Lock()
	node.srv = srv
	node.mu.Unlock()
	return nil
}

func (c *Cluster) routes() []string {
	var routes []string
	for _, node := range c.nodes {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", node.routePort))
	}
	return routes
}

// URL lists every node's client URL, comma-separated, as NATS_URL takes
// them.
func (c *Cluster) URL() string {
	var urls []string
	for _, node := range c.nodes {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", node.clientPort))
	}
	return strings.Join(urls, ",")
}

// Names are the nodes' server names, by index.
func (c *Cluster) Names() []string {
	var names []string
	for _, node := range c.nodes {
		names = append(names, node.name)
	}
	return names
}

// Index is the index of the node named name, or -1.
func (c *Cluster) Index(name string) int {
	for i, node := range c.nodes {
		if node.name == name {
			return i
		}
	}
	return -1
}

// Stop stops node i (a no-op when it is stopped).
func (c *Cluster) Stop(i int) {
	node := c.nodes[i]
	node.mu.Lock()
	srv := node.srv
	node.srv = nil
	node.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

// Start starts node i again on its ports and store.
func (c *Cluster) Start(i int) {
	c.t.Helper()
	if err := c.start(c.nodes[i], c.routes()); err != nil {
		c.t.Fatalf("restart nats node: %v", err)
	}
}

// WaitReady waits until the cluster's JetStream answers: a meta leader is
// elected.
func (c *Cluster) WaitReady() {
	c.t.Helper()
	nc, err := nats.Connect(c.URL(), nats.MaxReconnects(-1))
	if err != nil {
		c.t.Fatalf("connect nats cluster: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		c.t.Fatalf("jetstream: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("nats cluster: JetStream not ready after 30 s: %v", err)
		}
		<-time.After(50 * time.Millisecond) // the next poll
	}
}

// freePort is a free loopback port.
func freePort(t testing.TB) int {
	t.Helper()
	_, port, _ := strings.Cut(FreeAddr(t), ":")
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	return n
}

// Connect opens a connection to the cluster, closed at cleanup.
func (c *Cluster) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(c.URL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatalf("connect nats cluster: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return nc, js
}
