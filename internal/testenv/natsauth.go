package testenv

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// StartNATSOptions starts an in-process JetStream server with opts (TLS,
// users, an operator) on a random loopback port with storage in the
// test's temp dir; cleanup stops it. Host, Port, StoreDir and JetStream
// are set unless opts sets them.
func StartNATSOptions(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Port == 0 {
		opts.Port = server.RANDOM_PORT
	}
	if opts.StoreDir == "" {
		opts.StoreDir = t.TempDir()
	}
	opts.JetStream, opts.NoLog, opts.NoSigs = true, true, true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		t.Fatal("start nats: not ready after 10s")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	return srv
}

// NKeyUser makes a user NKEY: its seed, written to a file, and its public
// key, for server.Options.Nkeys.
func NKeyUser(t testing.TB) (seedFile, public string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatalf("create nkey: %v", err)
	}
	seed, _ := kp.Seed()
	public, _ = kp.PublicKey()
	seedFile = filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, append(seed, '\n'), 0o600); err != nil {
		t.Fatalf("write seed: %v", err)
	}
	return seedFile, public
}

// Operator is a test's NATS operator with one JetStream-enabled account
// and a user of it: Configure puts the trust into a server's options, and
// CredsFile is the user's .creds file as nsc would write it.
type Operator struct {
	CredsFile string

	claims  *jwt.OperatorClaims
	account string // public key
	accJWT  string
	sysPub  string
	sysJWT  string
}

// NewOperator makes an operator, an account (with JetStream) and a user,
// and a system account the server needs in operator mode.
func NewOperator(t testing.TB) *Operator {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("operator: %v", err)
		}
	}
	okp, err := nkeys.CreateOperator()
	must(err)
	opub, _ := okp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	oc.Name = "test-operator"
	ojwt, err := oc.Encode(okp)
	must(err)
	oclaims, err := jwt.DecodeOperatorClaims(ojwt)
	must(err)

	account := func(name string, js bool) (nkeys.KeyPair, string, string) {
		akp, err := nkeys.CreateAccount()
		must(err)
		apub, _ := akp.PublicKey()
		ac := jwt.NewAccountClaims(apub)
		ac.Name = name
		if js {
			ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		ajwt, err := ac.Encode(okp)
		must(err)
		return akp, apub, ajwt
	}
	akp, apub, ajwt := account("fleet", true)
	_, spub, sjwt := account("SYS", false)

	ukp, err := nkeys.CreateUser()
	must(err)
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = "worker"
	uc.IssuerAccount = ""
	ujwt, err := uc.Encode(akp)
	must(err)
	useed, _ := ukp.Seed()
	creds, err := jwt.FormatUserConfig(ujwt, useed)
	must(err)
	f := filepath.Join(t.TempDir(), "worker.creds")
	must(os.WriteFile(f, creds, 0o600))
	return &Operator{CredsFile: f, claims: oclaims, account: apub, accJWT: ajwt, sysPub: spub, sysJWT: sjwt}
}

// Configure makes opts trust the operator, with its accounts in a memory
// resolver.
func (o *Operator) Configure(t testing.TB, opts *server.Options) {
	t.Helper()
	r := &server.MemAccResolver{}
	if err := r.Store(o.account, o.accJWT); err != nil {
		t.Fatalf("store account: %v", err)
	}
	if err := r.Store(o.sysPub, o.sysJWT); err != nil {
		t.Fatalf("store system account: %v", err)
	}
	opts.TrustedOperators = []*jwt.OperatorClaims{o.claims}
	opts.AccountResolver = r
	opts.SystemAccount = o.sysPub
}
