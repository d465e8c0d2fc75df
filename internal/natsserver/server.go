package natsserver

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Config configures an embedded server. The zero value is a server on a
// random loopback port with JetStream storage in a folder the caller must
// name (StoreDir is required).
type Config struct {
	// Host to listen on; "" means 127.0.0.1.
	Host string
	// Port to listen on; 0 means a random free port. When the port is taken
	// and FallbackToRandomPort is set, a random port is used instead.
	Port                 int
	FallbackToRandomPort bool
	// StoreDir holds JetStream's file storage.
	StoreDir string
	// ReadyTimeout bounds the wait for the server to accept clients;
	// 0 means 10 s.
	ReadyTimeout time.Duration
	// Cluster, when set, makes the server a node of a JetStream cluster.
	Cluster *Cluster
}

// Cluster makes a server one node of a NATS cluster with clustered
// JetStream: each node has its own name, store and route port, and the
// routes of the others.
type Cluster struct {
	// Name of the cluster, the same on every node.
	Name string
	// ServerName is this node's name, unique in the cluster (JetStream
	// places stream replicas by it).
	ServerName string
	// Port is this node's route port on Host; 0 means a random one.
	Port int
	// Routes are the other nodes' route URLs (nats-route://host:port).
	Routes []string
}

// Server is a running embedded NATS server.
type Server struct {
	srv *server.Server
}

// Start starts a server and waits until it accepts connections.
func Start(cfg Config) (*Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("start nats server: StoreDir is required")
	}
	host := cfg.Host
	if host == "" {
		host = "127.0.0.1"
	}
	port := cfg.Port
	if port == 0 {
		port = server.RANDOM_PORT
	} else if cfg.FallbackToRandomPort && !portFree(host, port) {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		Host:      host,
		Port:      port,
		JetStream: true,
		StoreDir:  cfg.StoreDir,
		NoLog:     true,
		NoSigs:    true,
		// No HTTP monitor, no cluster: one process, one server.
		MaxPayload: 1 << 20,
	}
	if c := cfg.Cluster; c != nil {
		if c.Name == "" || c.ServerName == "" {
			return nil, errors.New("start nats server: a cluster node needs the cluster's Name and its own ServerName")
		}
		opts.ServerName = c.ServerName
		opts.Cluster = server.ClusterOpts{Name: c.Name, Host: host, Port: c.Port}
		if c.Port == 0 {
			opts.Cluster.Port = server.RANDOM_PORT
		}
		for _, r := range c.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("start nats server: route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("start nats server: %w", err)
	}
	go srv.Start()
	wait := cfg.ReadyTimeout
	if wait == 0 {
		wait = 10 * time.Second
	}
	if !srv.ReadyForConnections(wait) {
		srv.Shutdown()
		return nil, fmt.Errorf("start nats server on %s:%d: not ready after %s", host, port, wait)
	}
	return &Server{srv: srv}, nil
}

// URL is the client URL, e.g. nats://127.0.0.1:4222.
func (s *Server) URL() string { return s.srv.ClientURL() }

// RouteURL is a cluster node's route URL (nats-route://host:port), for
// the other nodes' Routes; "" for a server outside a cluster.
func (s *Server) RouteURL() string {
	a := s.srv.ClusterAddr()
	if a == nil {
		return ""
	}
	return "nats-route://" + a.String()
}

// Name is the server's name: a cluster node's ServerName.
func (s *Server) Name() string { return s.srv.Name() }

// Stop shuts the server down and waits for it; it is idempotent.
func (s *Server) Stop() {
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}

func portFree(host string, port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}
