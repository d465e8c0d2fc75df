package backend

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
)

// TLSFiles are the files of a TLS client: the CA that signs the server's
// certificate (empty: the system's roots) and a client certificate with
// its key (both or neither), all PEM.
type TLSFiles struct {
	CA, Cert, Key string
	// ServerName is the name the server's certificate must carry; empty:
	// the host of the URL.
	ServerName string
}

// Set reports whether any of the files (or the server name) is given.
func (f TLSFiles) Set() bool { return f.CA != "" || f.Cert != "" || f.Key != "" || f.ServerName != "" }

// TLSFileError is a problem with one of the TLS files; Field is "CA",
// "CERT" or "KEY", the end of the setting's name.
type TLSFileError struct {
	Field string
	Err   error
}

func (e *TLSFileError) Error() string { return e.Err.Error() }
func (e *TLSFileError) Unwrap() error { return e.Err }

// Config reads the files into a TLS configuration; nil without any.
func (f TLSFiles) Config() (*tls.Config, error) {
	if !f.Set() {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.ServerName}
	if f.CA != "" {
		pem, err := os.ReadFile(f.CA)
		if err != nil {
			return nil, &TLSFileError{"CA", err}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, &TLSFileError{"CA", fmt.Errorf("%s holds no PEM certificate", f.CA)}
		}
		c.RootCAs = pool
	}
	switch {
	case f.Cert != "" && f.Key == "":
		return nil, &TLSFileError{"KEY", fmt.Errorf("empty while the client certificate %s is set", f.Cert)}
	case f.Cert == "" && f.Key != "":
		return nil, &TLSFileError{"CERT", fmt.Errorf("empty while the client key %s is set", f.Key)}
	case f.Cert != "":
		if _, err := os.Stat(f.Cert); err != nil {
			return nil, &TLSFileError{"CERT", err}
		}
		if _, err := os.Stat(f.Key); err != nil {
			return nil, &TLSFileError{"KEY", err}
		}
		pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, &TLSFileError{"CERT", fmt.Errorf("%s with key %s: %w", f.Cert, f.Key, err)}
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

// tlsSetting names the setting of a TLSFiles error: prefix + its field.
func tlsSetting(prefix string, err error) string {
	var fe *TLSFileError
	if errors.As(err, &fe) {
		return prefix + fe.Field
	}
	return prefix + "*"
}

// NATSAuth are how a process proves who it is to NATS and checks the
// server: at most one of a credentials file (a user JWT and its seed, the
// operator mode of nsc), an NKEY seed file, or a user and password (which
// may also come in NATS_URL's userinfo); and TLS files. A tls:// URL, or
// any TLS file, makes the connection TLS.
type NATSAuth struct {
	// CredsFile is a .creds file (NATS_CREDS).
	CredsFile string
	// NKeySeedFile holds a user NKEY seed, SU… (NATS_NKEY_SEED_FILE).
	NKeySeedFile string
	// User and Password, or PasswordFile (NATS_USER, NATS_PASSWORD,
	// NATS_PASSWORD_FILE).
	User, Password, PasswordFile string
	// TLS are NATS_TLS_CA, NATS_TLS_CERT, NATS_TLS_KEY and
	// NATS_TLS_SERVER_NAME.
	TLS TLSFiles
}

// Check reads every file the settings name, as Options will, and reports
// the first problem with the name of the setting at fault.
func (a NATSAuth) Check() (setting string, err error) {
	_, setting, err = a.options()
	return setting, err
}

// Options are the nats.Options of the settings.
func (a NATSAuth) Options() ([]nats.Option, error) {
	opts, setting, err := a.options()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", setting, err)
	}
	return opts, nil
}

func (a NATSAuth) options() ([]nats.Option, string, error) {
	var opts []nats.Option
	n := 0
	for _, s := range []string{a.CredsFile, a.NKeySeedFile, a.User} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		return nil, "NATS_CREDS/NATS_NKEY_SEED_FILE/NATS_USER", errors.New("set one way to authenticate, not several")
	}
	switch {
	case a.CredsFile != "":
		data, err := os.ReadFile(a.CredsFile)
		if err != nil {
			return nil, "NATS_CREDS", err
		}
		j, err := nkeys.ParseDecoratedJWT(data)
		if err == nil {
			_, err = jwt.DecodeUserClaims(j)
		}
		if err != nil {
			return nil, "NATS_CREDS", fmt.Errorf("%s: no user JWT: %w", a.CredsFile, err)
		}
		kp, err := nkeys.ParseDecoratedUserNKey(data)
		if err != nil {
			return nil, "NATS_CREDS", fmt.Errorf("%s: no user seed: %w", a.CredsFile, err)
		}
		kp.Wipe()
		opts = append(opts, nats.UserCredentials(a.CredsFile))
	case a.NKeySeedFile != "":
		if _, err := os.Stat(a.NKeySeedFile); err != nil {
			return nil, "NATS_NKEY_SEED_FILE", err
		}
		o, err := nats.NkeyOptionFromSeed(a.NKeySeedFile)
		if err != nil {
			return nil, "NATS_NKEY_SEED_FILE", fmt.Errorf("%s: %w", a.NKeySeedFile, err)
		}
		opts = append(opts, o)
	}
	if a.Password != "" && a.PasswordFile != "" {
		return nil, "NATS_PASSWORD_FILE", errors.New("set NATS_PASSWORD or NATS_PASSWORD_FILE, not both")
	}
	if (a.Password != "" || a.PasswordFile != "") && a.User == "" {
		return nil, "NATS_USER", errors.New("empty while a NATS password is set")
	}
	if a.User != "" {
		pw := a.Password
		if a.PasswordFile != "" {
			data, err := os.ReadFile(a.PasswordFile)
			if err != nil {
				return nil, "NATS_PASSWORD_FILE", err
			}
			pw = strings.TrimRight(string(data), "\r\n")
			if pw == "" {
				return nil, "NATS_PASSWORD_FILE", fmt.Errorf("%s is empty", a.PasswordFile)
			}
		}
		opts = append(opts, nats.UserInfo(a.User, pw))
	}
	tc, err := a.TLS.Config()
	if err != nil {
		return nil, tlsSetting("NATS_TLS_", err), err
	}
	if tc != nil {
		opts = append(opts, nats.Secure(tc))
	}
	return opts, "", nil
}

// CheckNATSURL reports what is wrong with NATS_URL: one or more
// comma-separated nats://, tls://, ws:// or wss:// URLs (or host:port).
func CheckNATSURL(urls string) error {
	for i, p := range strings.Split(urls, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			return fmt.Errorf("server %d is empty", i+1)
		}
		if !strings.Contains(p, "://") {
			p = "nats://" + p
		}
		u, err := url.Parse(p)
		if err != nil {
			// Not quoted: an unparsable URL cannot be redacted.
			return fmt.Errorf("server %d: %v", i+1, redactErr(err))
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return fmt.Errorf("%s: scheme %q is not nats, tls, ws or wss", RedactURLs(p), u.Scheme)
		}
		if u.Host == "" {
			return fmt.Errorf("%s names no host", RedactURLs(p))
		}
	}
	return nil
}

// redactErr keeps a url.Error's operation and cause without the URL it
// quotes, which may hold a password.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// CheckRedis reports what is wrong with REDIS_URL and the Redis TLS files,
// naming the setting at fault.
func CheckRedis(redisURL string, files TLSFiles) (setting string, err error) {
	if err := rdb.CheckURL(redisURL); err != nil {
		return "REDIS_URL", redactErr(err)
	}
	if _, err := files.Config(); err != nil {
		return tlsSetting("REDIS_TLS_", err), err
	}
	if files.Set() && !strings.HasPrefix(redisURL, "rediss://") {
		return "REDIS_URL", fmt.Errorf("%s is not a rediss:// URL while REDIS_TLS_* are set", RedactURLs(redisURL))
	}
	return "", nil
}

// CheckSentinel reports what is wrong with the Redis Sentinel settings,
// naming the setting at fault.
func CheckSentinel(s rdb.Sentinel) (setting string, err error) {
	if err := (rdb.Sentinel{Addrs: s.Addrs}).Check(); err != nil {
		return "REDIS_SENTINELS", err
	}
	if err := (rdb.Sentinel{Addrs: []string{"127.0.0.1:26379"}, MasterName: s.MasterName}).Check(); err != nil {
		return "REDIS_MASTER_NAME", err
	}
	if !s.Enabled() {
		// REDIS_MASTER_NAME has a default, and means nothing alone.
		for _, v := range []struct{ setting, value string }{
			{"REDIS_SENTINEL_USER", s.Username}, {"REDIS_SENTINEL_PASSWORD", s.Password},
		} {
			if v.value != "" {
				return v.setting, errors.New("set without REDIS_SENTINELS")
			}
		}
	}
	if s.Username != "" && s.Password == "" {
		return "REDIS_SENTINEL_PASSWORD", errors.New("REDIS_SENTINEL_USER is set without its password")
	}
	return "", nil
}
