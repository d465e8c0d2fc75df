package redisserver

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/alicebob/miniredis/v2/server"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// embedded is miniredis in this process, with a snapshot file.
type embedded struct {
	mr       *miniredis.Miniredis
	path     string
	log      *zap.Logger
	interval time.Duration

	// writes counts the commands that may change data, from the server's
	// pre-hook; the snapshot loop compares it with seen.
	writes atomic.Uint64

	stopLoop chan struct{}
	loopDone chan struct{}

	// Owned by the snapshot loop, and by stop once the loop has ended.
	seen    uint64
	settle  bool            // take one more snapshot at the next tick
	written []byte          // the snapshot file's content
	failing string          // the loop's last logged error
	skipped map[string]bool // keys of types a snapshot does not keep, logged once
}

// startEmbedded loads the snapshot, if any, into a fresh miniredis, starts
// it on the port, and starts the snapshot loop.
func startEmbedded(cfg Config, log *zap.Logger) (*embedded, error) {
	e := &embedded{
		mr:       miniredis.NewMiniRedis(),
		path:     filepath.Join(cfg.Dir, snapshotName),
		log:      log,
		interval: cfg.SnapshotInterval,
		stopLoop: make(chan struct{}),
		loopDone: make(chan struct{}),
		// A write between StartAddr and SetPreHook below is not counted:
		// the first tick snapshots regardless.
		settle:  true,
		skipped: map[string]bool{},
	}
	// TTLs run on the wall clock, as in Redis (miniredis's default is to
	// move them only on FastForward).
	e.mr.ClockTTL(true)
	snap, data, err := readSnapshot(e.path)
	if err != nil {
		return nil, err
	}
	if snap != nil {
		loaded, expired, err := restore(e.mr, snap, time.Now())
		if err != nil {
			return nil, fmt.Errorf("load snapshot %s: %w", e.path, err)
		}
		e.written = data
		log.Info("snapshot loaded", zap.String("path", e.path), zap.Int("keys", loaded), zap.Int("expired", expired))
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.Port))
	if err := e.mr.StartAddr(addr); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := e.mr.Server()
	srv.SetPreHook(func(_ *server.Peer, cmd string, args ...string) bool {
		if changesData(srv, cmd, args) {
			e.writes.Add(1)
		}
		return false
	})
	go e.loop()
	log.Info("miniredis started", zap.String("addr", e.mr.Addr()), zap.String("snapshot", e.path))
	return e, nil
}

func (e *embedded) url() string { return "redis://" + e.mr.Addr() + "/0" }

// notData are commands that change no key, and which clients send often.
// Anything else that is not read-only counts as a write: an extra snapshot
// costs little, a missed one loses data.
var notData = map[string]bool{
	"SELECT": true, "PING": true, "ECHO": true, "HELLO": true, "AUTH": true, "CLIENT": true,
	"QUIT": true, "TIME": true, "INFO": true, "COMMAND": true, "SCRIPT": true,
	"MULTI": true, "DISCARD": true, "WATCH": true, "UNWATCH": true,
	"SUBSCRIBE": true, "PSUBSCRIBE": true, "UNSUBSCRIBE": true, "PUNSUBSCRIBE": true,
	"PUBLISH": true, "PUBSUB": true,
}

// changesData says whether a command may change a key. The snapshot's own
// script, and the commands it runs, do not count.
func changesData(srv *server.Server, cmd string, args []string) bool {
	if notData[cmd] || srv.IsReadOnlyCommand(cmd) {
		return false
	}
	return cmd != "EVAL" || len(args) == 0 || args[0] != dumpScript
}

// loop writes a snapshot every interval while keys change.
func (e *embedded) loop() {
	defer close(e.loopDone)
	tick := time.NewTicker(e.interval)
	defer tick.Stop()
	for {
		select {
		case <-e.stopLoop:
			return
		case <-tick.C:
			e.report(e.snapshotIfChanged())
		}
	}
}

// snapshotIfChanged is the loop's unit of work: it writes a snapshot when a
// command may have changed data since the last one.
func (e *embedded) snapshotIfChanged() error {
	n := e.writes.Load()
	if n == e.seen && !e.settle {
		return nil
	}
	// The pre-hook counts a write before it runs, so the write may land
	// just after this snapshot: after a change, snapshot once more at the
	// next tick.
	e.settle = n != e.seen
	e.seen = n
	return e.save()
}

// report logs the loop's failures when they start or change, and the
// recovery; the loop carries on, since the next snapshot may work.
func (e *embedded) report(err error) {
	switch {
	case err != nil && err.Error() != e.failing:
		e.failing = err.Error()
		e.log.Error("snapshot failed; retrying every interval", zap.String("path", e.path), zap.Error(err))
	case err == nil && e.failing != "":
		e.failing = ""
		e.log.Info("snapshot written again", zap.String("path", e.path))
	}
}

// save writes a snapshot of the current data, unless it is the file's
// content already.
func (e *embedded) save() error {
	snap, skipped, err := e.dump()
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", e.path, err)
	}
	for _, k := range skipped {
		if !e.skipped[k] {
			e.skipped[k] = true
			e.log.Warn("snapshot leaves out a key of a type it does not keep", zap.String("key", k))
		}
	}
	data, err := snap.encode()
	if err != nil {
		return fmt.Errorf("snapshot %s: encode: %w", e.path, err)
	}
	if bytes.Equal(data, e.written) {
		return nil
	}
	if err := writeFileAtomic(e.path, data); err != nil {
		return err
	}
	e.written = data
	return nil
}

// dumpScript reads every key of databases 0 to 15 in one script, which
// miniredis runs under its lock, so the snapshot is consistent: a job moved
// from one key to another by a script is in exactly one of them. It returns
// TIME, then per key {db, key, type, pttl, value...}; a key that expires
// while the script runs comes out with no value and is left out.
const dumpScript = `
local now = redis.call('TIME')
local out = {now[1], now[2]}
for db = 0, 15 do
  redis.call('SELECT', db)
  for _, k in ipairs(redis.call('KEYS', '*')) do
    local pttl = redis.call('PTTL', k)
    if pttl ~= -2 then
      local typ = redis.call('TYPE', k)['ok']
      local e = {db, k, typ, pttl}
      local vals = {}
      if typ == 'string' then
        local v = redis.call('GET', k)
        if v then vals = {v} end
      elseif typ == 'hash' then vals = redis.call('HGETALL', k)
      elseif typ == 'list' then vals = redis.call('LRANGE', k, 0, -1)
      elseif typ == 'set' then vals = redis.call('SMEMBERS', k)
      elseif typ == 'zset' then vals = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
      end
      for _, v in ipairs(vals) do e[#e + 1] = v end
      out[#out + 1] = e
    end
  end
end
return out
`

// dump runs dumpScript over an in-memory connection (which works after
// Close too: miniredis then serves it without a listener). It returns the
// snapshot and the keys of types it leaves out.
func (e *embedded) dump() (*snapshot, []string, error) {
	rdb := redis.NewClient(&redis.Options{
		Dialer:          func(context.Context, string, string) (net.Conn, error) { return e.mr.Dial() },
		Protocol:        2,
		DisableIdentity: true,
		PoolSize:        1,
		MaxRetries:      -1,
	})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := rdb.Eval(ctx, dumpScript, nil).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("read keys: %w", err)
	}
	return parseDump(res)
}

// parseDump turns dumpScript's reply into a snapshot.
func parseDump(res any) (*snapshot, []string, error) {
	top, ok := res.([]any)
	if !ok || len(top) < 2 {
		return nil, nil, fmt.Errorf("script reply %T is not [time, keys...]", res)
	}
	sec, err1 := strconv.ParseInt(str(top[0]), 10, 64)
	usec, err2 := strconv.ParseInt(str(top[1]), 10, 64)
	if err1 != nil || err2 != nil {
		return nil, nil, fmt.Errorf("script reply: time %v %v is not two integers", top[0], top[1])
	}
	nowMS := sec*1000 + usec/1000
	snap := &snapshot{Keys: make([]entry, 0, len(top)-2)}
	var skipped []string
	for _, r := range top[2:] {
		row, ok := r.([]any)
		if !ok || len(row) < 4 {
			return nil, nil, fmt.Errorf("script reply: key %v is not [db, key, type, pttl, value...]", r)
		}
		db, okDB := row[0].(int64)
		key, okKey := row[1].(string)
		typ, okType := row[2].(string)
		pttl, okTTL := row[3].(int64)
		if !okDB || !okKey || !okType || !okTTL {
			return nil, nil, fmt.Errorf("script reply: key %v is not [db, key, type, pttl, value...]", row[:4])
		}
		e := entry{DB: int(db), Key: []byte(key), Type: typ}
		if pttl >= 0 {
			e.ExpireAt = nowMS + pttl
		}
		vals := row[4:]
		if len(vals) == 0 {
			continue // expired while the script ran
		}
		switch typ {
		case typeString, typeHash, typeList, typeSet:
			e.Values = make([][]byte, len(vals))
			for i, v := range vals {
				e.Values[i] = []byte(str(v))
			}
		case typeZSet:
			if len(vals)%2 != 0 {
				return nil, nil, fmt.Errorf("script reply: zset %q has %d members and scores", key, len(vals))
			}
			for i := 0; i < len(vals); i += 2 {
				e.Values = append(e.Values, []byte(str(vals[i])))
				e.Scores = append(e.Scores, str(vals[i+1]))
			}
		default:
			skipped = append(skipped, fmt.Sprintf("db %d %q (%s)", db, key, typ))
			continue
		}
		snap.Keys = append(snap.Keys, e)
	}
	return snap, skipped, nil
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// restore puts a snapshot's keys into m, with what is left of their TTLs at
// now, and leaves out those that expired meanwhile.
func restore(m *miniredis.Miniredis, snap *snapshot, now time.Time) (loaded, expired int, err error) {
	for _, e := range snap.Keys {
		var ttl time.Duration
		if e.ExpireAt != 0 {
			if ttl = time.UnixMilli(e.ExpireAt).Sub(now); ttl <= 0 {
				expired++
				continue
			}
		}
		db, key := m.DB(e.DB), string(e.Key)
		vals := make([]string, len(e.Values))
		for i, v := range e.Values {
			vals[i] = string(v)
		}
		switch e.Type {
		case typeString:
			err = db.Set(key, vals[0])
		case typeHash:
			db.HSet(key, vals...)
		case typeList:
			_, err = db.Push(key, vals...)
		case typeSet:
			_, err = db.SetAdd(key, vals...)
		case typeZSet:
			var scores []float64
			if scores, err = e.scores(); err == nil {
				for i, member := range vals {
					if _, err = db.ZAdd(key, scores[i], member); err != nil {
						break
					}
				}
			}
		default:
			err = fmt.Errorf("type %q is not one a snapshot keeps", e.Type)
		}
		if err != nil {
			return loaded, expired, fmt.Errorf("db %d key %q: %w", e.DB, e.Key, err)
		}
		if ttl > 0 {
			db.SetTTL(key, ttl)
		}
		loaded++
	}
	return loaded, expired, nil
}

// stop ends the snapshot loop, closes the server and writes the final
// snapshot. Order: the loop first, so it does not race the final snapshot;
// then the listener and every client connection (Close waits for their
// commands), so no write comes after the final snapshot; then the final
// snapshot over an in-memory connection; then that connection's server.
func (e *embedded) stop() error {
	close(e.stopLoop)
	<-e.loopDone
	e.mr.Close()
	err := e.save()
	e.mr.Close()
	return err
}
