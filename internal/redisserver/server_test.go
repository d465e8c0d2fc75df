package redisserver

import (
	"context"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

var backends = []Backend{BackendRedisServer, BackendMiniredis}

// eachBackend runs test once per backend, in parallel, each with a folder
// of its own.
func eachBackend(t *testing.T, test func(t *testing.T, b Backend, dir string)) {
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			t.Parallel()
			test(t, b, t.TempDir())
		})
	}
}

// start starts a server on dir; cleanup stops it (a test that stops it
// itself makes that a no-op).
func start(t *testing.T, dir string, b Backend) *Server {
	t.Helper()
	srv, err := Start(Config{Dir: dir, Backend: b, Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Stop() })
	require.Equal(t, b, srv.Backend())
	return srv
}

// client connects to srv's database db; cleanup closes it.
func client(t *testing.T, srv *Server, db int) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(srv.URL())
	require.NoError(t, err)
	opts.DB = db
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// waitPast returns once the wall clock has passed t: the test is about
// keys expiring while the server is down, so the clock is the condition.
func waitPast(t time.Time) {
	<-time.After(time.Until(t) + 10*time.Millisecond)
}

// scores a sorted set must keep exactly: millisecond timestamps, their
// neighbours one bit away, and the values Redis prints specially.
var scores = []float64{
	float64(time.Now().UnixMilli()),
	math.Nextafter(float64(time.Now().UnixMilli()), math.Inf(1)),
	1_700_000_000_123.5,
	0.1, -0.25, 1e-300, 5e-324, math.MaxFloat64, 0,
	math.Inf(1), math.Inf(-1),
}

func TestRestartKeepsEveryKey(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b Backend, dir string) {
		ctx := ctx(t)

		srv := start(t, dir, b)
		c, c3 := client(t, srv, 0), client(t, srv, 3)
		binary := "bin\x00\xff\xfe\r\n"
		require.NoError(t, c.Set(ctx, "s", "plain", 0).Err())
		require.NoError(t, c.Set(ctx, binary, binary, 0).Err())
		require.NoError(t, c.Set(ctx, "s:ttl", "v", time.Hour).Err())
		require.NoError(t, c.HSet(ctx, "h", "f1", "v1", "empty", "", binary, binary).Err())
		require.NoError(t, c.Expire(ctx, "h", 30*time.Minute).Err())
		require.NoError(t, c.RPush(ctx, "l", "a", "b", "a", binary, "").Err())
		require.NoError(t, c.SAdd(ctx, "set", "x", "y", binary).Err())
		require.NoError(t, c.PExpire(ctx, "set", 20*time.Minute).Err())
		var zs []redis.Z
		for i, s := range scores {
			zs = append(zs, redis.Z{Score: s, Member: "m" + strconv.Itoa(i)})
		}
		require.NoError(t, c.ZAdd(ctx, "z", zs...).Err())
		require.NoError(t, c.Set(ctx, "short", "v", 300*time.Millisecond).Err())
		shortDeadline := time.Now().Add(300 * time.Millisecond)
		require.NoError(t, c3.Set(ctx, "in-db-3", "three", 0).Err())

		require.NoError(t, srv.Stop())
		stopped := time.Now()
		waitPast(shortDeadline)

		srv = start(t, dir, b)
		c, c3 = client(t, srv, 0), client(t, srv, 3)
		// Right after start: a TTL restored as "what was left" would
		// still hold it.
		assert.Zero(t, c.Exists(ctx, "short").Val(), "key that expired while down")
		down := time.Since(stopped)

		assert.Equal(t, "plain", c.Get(ctx, "s").Val())
		assert.Equal(t, binary, c.Get(ctx, binary).Val())
		assert.Equal(t, time.Duration(-1), c.PTTL(ctx, "s").Val())
		assert.Equal(t, "three", c3.Get(ctx, "in-db-3").Val())
		assert.Zero(t, c.Exists(ctx, "in-db-3").Val())

		assertTTL(t, c.PTTL(ctx, "s:ttl").Val(), time.Hour, down)
		assert.Equal(t, map[string]string{"f1": "v1", "empty": "", binary: binary}, c.HGetAll(ctx, "h").Val())
		assertTTL(t, c.PTTL(ctx, "h").Val(), 30*time.Minute, down)
		assert.Equal(t, []string{"a", "b", "a", binary, ""}, c.LRange(ctx, "l", 0, -1).Val())
		members := c.SMembers(ctx, "set").Val()
		sort.Strings(members)
		assert.Equal(t, []string{binary, "x", "y"}, members)
		assertTTL(t, c.PTTL(ctx, "set").Val(), 20*time.Minute, down)

		got := c.ZRangeWithScores(ctx, "z", 0, -1).Val()
		require.Len(t, got, len(scores))
		for _, z := range got {
			i, err := strconv.Atoi(z.Member.(string)[1:])
			require.NoError(t, err)
			assert.Equal(t, math.Float64bits(scores[i]), math.Float64bits(z.Score),
				"score of %s: want %v, got %v", z.Member, scores[i], z.Score)
		}
		assert.Equal(t, time.Duration(-1), c.PTTL(ctx, "z").Val())
	})
}

// assertTTL checks that a TTL set to set, after the server was down for at
// least down, has not gained time and lost no more than down plus a margin.
func assertTTL(t *testing.T, got, set, down time.Duration) {
	t.Helper()
	assert.LessOrEqual(t, got, set-down+time.Millisecond, "TTL kept the time spent down")
	assert.Greater(t, got, set-down-5*time.Second)
}

func TestLuaHasTIME(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b Backend, dir string) {
		ctx := ctx(t)
		c := client(t, start(t, dir, b), 0)
		before := time.Now().Truncate(time.Second)
		res, err := c.Eval(ctx, `local t = redis.call('TIME') return {t[1], t[2]}`, nil).StringSlice()
		require.NoError(t, err)
		require.Len(t, res, 2)
		sec, err := strconv.ParseInt(res[0], 10, 64)
		require.NoError(t, err)
		usec, err := strconv.ParseInt(res[1], 10, 64)
		require.NoError(t, err)
		now := time.Unix(sec, usec*1000)
		assert.False(t, now.Before(before), "TIME %s is before %s", now, before)
		assert.False(t, now.After(time.Now()), "TIME %s is in the future", now)
	})
}

func TestStopIsIdempotent(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b Backend, dir string) {
		srv := start(t, dir, b)
		var wg sync.WaitGroup
		errs := make([]error, 3)
		for i := range errs {
			wg.Go(func() { errs[i] = srv.Stop() })
		}
		wg.Wait()
		assert.Equal(t, []error{nil, nil, nil}, errs)
		assert.NoError(t, srv.Stop())
	})
	t.Run("nil and zero servers", func(t *testing.T) {
		var nilServer *Server
		assert.NoError(t, nilServer.Stop())
		assert.NoError(t, (&Server{}).Stop())
	})
}

func TestStartStopStress(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b Backend, dir string) {
		ctx := ctx(t)
		for i := 1; i <= 5; i++ {
			srv, err := Start(Config{Dir: dir, Backend: b, Logger: zaptest.NewLogger(t)})
			require.NoError(t, err, "cycle %d", i)
			c := client(t, srv, 0)
			n, err := c.Incr(ctx, "cycles").Result()
			require.NoError(t, err, "cycle %d", i)
			require.EqualValues(t, i, n, "cycle %d", i)
			require.NoError(t, c.Close())
			require.NoError(t, srv.Stop(), "cycle %d", i)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"defaults", Config{Dir: "x"}, ""},
		{"no dir", Config{}, "dir: is required"},
		{"port", Config{Dir: "x", Port: 70000}, "port: 70000 is out of range"},
		{"backend", Config{Dir: "x", Backend: "valkey"}, `backend: "valkey" is not`},
		{"binary with miniredis", Config{Dir: "x", Backend: BackendMiniredis, RedisServer: "/bin/redis-server"}, `redis server: "/bin/redis-server" is set with backend "miniredis"`},
		{"negative duration", Config{Dir: "x", StopTimeout: -time.Second}, "stop timeout: -1s is negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.wantErr == "" {
				assert.NoError(t, err)
				return
			}
			assert.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestRedisServerThatDoesNotRun(t *testing.T) {
	t.Parallel()
	t.Run("missing binary is an error, not miniredis", func(t *testing.T) {
		t.Parallel()
		missing := filepath.Join(t.TempDir(), "redis-server")
		_, err := Start(Config{Dir: t.TempDir(), RedisServer: missing})
		assert.ErrorContains(t, err, missing)
	})
	t.Run("exits at once", func(t *testing.T) {
		t.Parallel()
		bin := filepath.Join(t.TempDir(), "redis-server")
		script := "#!/bin/sh\necho 'FATAL: cannot open the append-only file' >&2\nexit 1\n"
		require.NoError(t, os.WriteFile(bin, []byte(script), 0o755))
		_, err := Start(Config{Dir: t.TempDir(), RedisServer: bin})
		require.Error(t, err)
		assert.ErrorContains(t, err, bin)
		assert.ErrorContains(t, err, "exited before answering PING")
		assert.ErrorContains(t, err, "FATAL: cannot open the append-only file")
	})
	t.Run("never answers", func(t *testing.T) {
		t.Parallel()
		bin := filepath.Join(t.TempDir(), "redis-server")
		require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\necho starting\nexec sleep 60\n"), 0o755))
		_, err := Start(Config{Dir: t.TempDir(), RedisServer: bin, ReadyTimeout: 300 * time.Millisecond})
		require.Error(t, err)
		assert.ErrorContains(t, err, "no answer to PING after 300ms")
		assert.ErrorContains(t, err, "starting")
	})
	t.Run("port taken", func(t *testing.T) {
		t.Parallel()
		taken := start(t, t.TempDir(), BackendMiniredis)
		_, port := splitURL(t, taken.URL())
		_, err := Start(Config{Dir: t.TempDir(), Backend: BackendRedisServer, Port: port})
		// Either redis-server fails to bind first, or the probe finds
		// the other server first.
		assert.ErrorIs(t, err, errAddrInUse)
		assert.ErrorContains(t, err, "127.0.0.1:"+strconv.Itoa(port))
	})
}

func TestProbeTellsAnotherServer(t *testing.T) {
	t.Parallel()
	other := miniredis.RunT(t)
	err := probe(other.Addr(), os.Getpid(), time.Second)
	assert.ErrorIs(t, err, errAddrInUse)
	assert.ErrorContains(t, err, fmt.Sprintf("the server there answers INFO with \"-section (server) is not supported\", not as process %d", os.Getpid()))
}

func TestBackendRedisServerNeedsABinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := Start(Config{Dir: t.TempDir(), Backend: BackendRedisServer})
	assert.ErrorContains(t, err, "backend redis-server")
	assert.ErrorContains(t, err, `"redis-server": executable file not found`)

	srv, err := Start(Config{Dir: t.TempDir()})
	require.NoError(t, err)
	assert.Equal(t, BackendMiniredis, srv.Backend(), "no redis-server on PATH")
	assert.NoError(t, srv.Stop())
}

func TestFixedPort(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b Backend, dir string) {
		port, err := freePort()
		require.NoError(t, err)
		srv, err := Start(Config{Dir: dir, Backend: b, Port: port})
		require.NoError(t, err)
		defer srv.Stop()
		assert.Equal(t, "redis://127.0.0.1:"+strconv.Itoa(port)+"/0", srv.URL())
		assert.NoError(t, client(t, srv, 0).Ping(ctx(t)).Err())
	})
}

func splitURL(t *testing.T, url string) (string, int) {
	t.Helper()
	opts, err := redis.ParseURL(url)
	require.NoError(t, err)
	host, portStr, err := net.SplitHostPort(opts.Addr)
	require.NoError(t, err)
	port, err := strconv.Atoi(portStr)
	require.NoError(t, err)
	return host, port
}
