package role

import (
	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
)

// Security are the settings that let a process join a fleet across an
// untrusted network: how it authenticates to NATS (a credentials file,
// an NKEY seed, a user and password), the TLS files of NATS and of
// Redis. Every role and the CLI's fleet commands bind them; docs/security.md
// says how to make the files. Beside them, for the same processes, the
// Redis Sentinel settings that find a fleet's Redis master
// (docs/scaling.md).
type Security struct {
	NATS          backend.NATSAuth
	RedisTLS      backend.TLSFiles
	RedisSentinel rdb.Sentinel
}

// Bind binds the security settings.
func (s *Security) Bind(fs *flagenv.Set) {
	fs.String(&s.NATS.CredsFile, "nats-creds", "NATS_CREDS", "", "NATS credentials file (.creds: a user JWT and its NKEY seed, as nsc writes it) for a server in operator mode")
	fs.String(&s.NATS.NKeySeedFile, "nats-nkey-seed-file", "NATS_NKEY_SEED_FILE", "", "file with the NKEY seed (SU…) of a NATS user the server knows by its public key")
	fs.String(&s.NATS.User, "nats-user", "NATS_USER", "", "NATS user (instead of user:password@ in NATS_URL)")
	fs.String(&s.NATS.Password, "nats-password", "NATS_PASSWORD", "", "password of NATS_USER")
	fs.String(&s.NATS.PasswordFile, "nats-password-file", "NATS_PASSWORD_FILE", "", "file holding the password of NATS_USER (a Docker or Kubernetes secret); instead of NATS_PASSWORD")
	fs.String(&s.NATS.TLS.CA, "nats-tls-ca", "NATS_TLS_CA", "", "PEM file of the CA that signed the NATS server's certificate (empty: the system's roots); set, or a tls:// NATS_URL, makes the connection TLS")
	fs.String(&s.NATS.TLS.Cert, "nats-tls-cert", "NATS_TLS_CERT", "", "PEM client certificate for a NATS server that verifies clients (with NATS_TLS_KEY)")
	fs.String(&s.NATS.TLS.Key, "nats-tls-key", "NATS_TLS_KEY", "", "PEM private key of NATS_TLS_CERT")
	fs.String(&s.NATS.TLS.ServerName, "nats-tls-server-name", "NATS_TLS_SERVER_NAME", "", "name the NATS server's certificate must carry (empty: the host of NATS_URL)")
	fs.String(&s.RedisTLS.CA, "redis-tls-ca", "REDIS_TLS_CA", "", "PEM file of the CA that signed the Redis server's certificate, for a rediss:// REDIS_URL (empty: the system's roots)")
	fs.String(&s.RedisTLS.Cert, "redis-tls-cert", "REDIS_TLS_CERT", "", "PEM client certificate for a Redis that verifies clients (tls-auth-clients; with REDIS_TLS_KEY)")
	fs.String(&s.RedisTLS.Key, "redis-tls-key", "REDIS_TLS_KEY", "", "PEM private key of REDIS_TLS_CERT")
	fs.String(&s.RedisTLS.ServerName, "redis-tls-server-name", "REDIS_TLS_SERVER_NAME", "", "name the Redis server's certificate must carry (empty: the host of REDIS_URL, or with REDIS_SENTINELS each server's own host)")
	fs.List(&s.RedisSentinel.Addrs, "redis-sentinels", "REDIS_SENTINELS", nil, "Redis Sentinel host:port list (comma-separated): find the Redis master through them and follow its failovers; REDIS_URL then gives only the master's scheme, user, password and database, not its host")
	fs.String(&s.RedisSentinel.MasterName, "redis-master-name", "REDIS_MASTER_NAME", rdb.DefaultMasterName, "name the sentinels monitor the Redis master under (sentinel monitor <name> …), with REDIS_SENTINELS")
	fs.String(&s.RedisSentinel.Username, "redis-sentinel-user", "REDIS_SENTINEL_USER", "", "ACL user of the sentinels themselves (with REDIS_SENTINEL_PASSWORD); the master's user is REDIS_URL's")
	fs.String(&s.RedisSentinel.Password, "redis-sentinel-password", "REDIS_SENTINEL_PASSWORD", "", "password of the sentinels themselves (their requirepass, or REDIS_SENTINEL_USER's); the master's password is REDIS_URL's")
}

// Finish reads every file the settings name and checks them against the
// URLs, naming the setting at fault: a missing or unreadable file, a
// certificate without its key, a TLS file for a redis:// URL.
func (s *Security) Finish(natsURL, redisURL string) (setting string, err error) {
	if natsURL != "" {
		if err := backend.CheckNATSURL(natsURL); err != nil {
			return "NATS_URL", err
		}
	}
	if setting, err := s.NATS.Check(); err != nil {
		return setting, err
	}
	if redisURL == "" {
		redisURL = backend.DefaultRedisURL
	}
	if setting, err := backend.CheckRedis(redisURL, s.RedisTLS); err != nil {
		return setting, err
	}
	return backend.CheckSentinel(s.RedisSentinel)
}
