package redisserver

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

func writeSnapshot(t *testing.T, dir string, s *snapshot) {
	t.Helper()
	data, err := s.encode()
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, snapshotName), data, 0o644))
}

func TestCorruptSnapshotIsAnError(t *testing.T) {
	t.Parallel()
	valid, err := (&snapshot{Keys: []entry{{Key: []byte("k"), Type: typeString, Values: [][]byte{[]byte("v")}}}}).encode()
	require.NoError(t, err)
	tests := []struct {
		name    string
		content []byte
		wantErr string
	}{
		{"garbage", []byte("\x00\x01not json"), "invalid character"},
		{"empty", nil, "unexpected end of JSON input"},
		{"truncated", valid[:len(valid)/2], "unexpected end of JSON input"},
		{"trailing data", append(bytes.Clone(valid), "{}"...), "invalid character"},
		{"other format", []byte(`{"format":"rdb","version":1}`), `format "rdb" is not`},
		{"newer version", []byte(`{"format":"comfyfleet-miniredis-snapshot","version":2}`), "version 2 is not 1"},
		{"unknown type", []byte(`{"format":"comfyfleet-miniredis-snapshot","version":1,"keys":[{"db":0,"key":"aw==","type":"stream","values":["dg=="]}]}`), `type "stream"`},
		{"db out of range", []byte(`{"format":"comfyfleet-miniredis-snapshot","version":1,"keys":[{"db":16,"key":"aw==","type":"string","values":["dg=="]}]}`), "db 16 is not 0 to 15"},
		{"odd hash", []byte(`{"format":"comfyfleet-miniredis-snapshot","version":1,"keys":[{"db":0,"key":"aw==","type":"hash","values":["dg=="]}]}`), "a hash has 1 fields and values"},
		{"bad score", []byte(`{"format":"comfyfleet-miniredis-snapshot","version":1,"keys":[{"db":0,"key":"aw==","type":"zset","values":["dg=="],"scores":["nan"]}]}`), `score "nan"`},
		{"missing score", []byte(`{"format":"comfyfleet-miniredis-snapshot","version":1,"keys":[{"db":0,"key":"aw==","type":"zset","values":["dg==","dw=="],"scores":["1"]}]}`), "2 members and 1 scores"},
		{"twice", []byte(`{"format":"comfyfleet-miniredis-snapshot","version":1,"keys":[{"db":0,"key":"aw==","type":"set","values":["dg=="]},{"db":0,"key":"aw==","type":"list","values":["dg=="]}]}`), "appears twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, snapshotName)
			require.NoError(t, os.WriteFile(path, tt.content, 0o644))
			srv, err := Start(Config{Dir: dir, Backend: BackendMiniredis})
			if err == nil {
				srv.Stop()
			}
			require.Error(t, err)
			assert.ErrorContains(t, err, "snapshot "+path+" is corrupt")
			assert.ErrorContains(t, err, tt.wantErr)
			after, err := os.ReadFile(path)
			require.NoError(t, err)
			assert.Equal(t, string(tt.content), string(after), "the corrupt file is left as it was")
		})
	}
}

func TestSnapshotExpiryIsAbsolute(t *testing.T) {
	t.Parallel()
	ctx := ctx(t)
	dir := t.TempDir()
	now := time.Now()
	v := [][]byte{[]byte("v")}
	writeSnapshot(t, dir, &snapshot{Keys: []entry{
		{Key: []byte("left-10s"), Type: typeString, Values: v, ExpireAt: now.Add(10 * time.Second).UnixMilli()},
		{Key: []byte("expired"), Type: typeString, Values: v, ExpireAt: now.Add(-time.Second).UnixMilli()},
		{Key: []byte("forever"), Type: typeString, Values: v},
	}})
	srv := start(t, dir, BackendMiniredis)
	c := client(t, srv, 0)
	assert.Zero(t, c.Exists(ctx, "expired").Val())
	assert.Equal(t, time.Duration(-1), c.PTTL(ctx, "forever").Val())
	ttl := c.PTTL(ctx, "left-10s").Val()
	assert.LessOrEqual(t, ttl, 10*time.Second)
	assert.Greater(t, ttl, 5*time.Second)
}

// The periodic snapshot is what survives a crash of the process: copying
// the file while the server runs is what a SIGKILL leaves behind.
func TestPeriodicSnapshotSurvivesACrash(t *testing.T) {
	t.Parallel()
	ctx := ctx(t)
	dir := t.TempDir()
	srv, err := Start(Config{Dir: dir, Backend: BackendMiniredis, SnapshotInterval: 10 * time.Millisecond, Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Stop() })
	c := client(t, srv, 0)
	require.NoError(t, c.Set(ctx, "job:1", "queued", time.Hour).Err())
	left := func() []byte {
		data, err := os.ReadFile(filepath.Join(dir, snapshotName))
		if err != nil {
			return nil
		}
		return data
	}
	hasKeys := func(keys ...string) func() bool {
		return func() bool {
			s, err := decodeSnapshot(left())
			if err != nil {
				return false
			}
			var got []string
			for _, e := range s.Keys {
				got = append(got, string(e.Key))
			}
			return assert.ObjectsAreEqual(keys, got)
		}
	}
	require.Eventually(t, hasKeys("job:1"), 10*time.Second, 5*time.Millisecond)

	// A script that moves a job from one key to another is in the
	// snapshot whole.
	require.NoError(t, c.Eval(ctx, `redis.call('DEL', KEYS[1]) redis.call('SET', KEYS[2], 'running', 'PX', 3600000) return 1`,
		[]string{"job:1", "job:1:running"}).Err())
	require.Eventually(t, hasKeys("job:1:running"), 10*time.Second, 5*time.Millisecond)

	crashed := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(crashed, snapshotName), left(), 0o644))
	c2 := client(t, start(t, crashed, BackendMiniredis), 0)
	assert.Equal(t, "running", c2.Get(ctx, "job:1:running").Val())
	assertTTL(t, c2.PTTL(ctx, "job:1:running").Val(), time.Hour, 0)
}

func TestSnapshotLeavesOutOtherTypes(t *testing.T) {
	t.Parallel()
	ctx := ctx(t)
	dir := t.TempDir()
	srv := start(t, dir, BackendMiniredis)
	c := client(t, srv, 0)
	require.NoError(t, c.XAdd(ctx, &redis.XAddArgs{Stream: "events", Values: []string{"k", "v"}}).Err())
	require.NoError(t, c.Set(ctx, "kept", "v", 0).Err())
	require.NoError(t, srv.Stop())

	c = client(t, start(t, dir, BackendMiniredis), 0)
	assert.Equal(t, "v", c.Get(ctx, "kept").Val())
	assert.Zero(t, c.Exists(ctx, "events").Val())
}

func TestChangesData(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	srv := m.Server()
	tests := []struct {
		cmd  string
		args []string
		want bool
	}{
		{"SET", []string{"k", "v"}, true},
		{"EVAL", []string{"return 1", "0"}, true},
		{"EXEC", nil, true},
		{"FLUSHALL", nil, true},
		{"GET", []string{"k"}, false},
		{"PTTL", []string{"k"}, false},
		{"SELECT", []string{"3"}, false},
		{"PING", nil, false},
		{"EVAL", []string{dumpScript, "0"}, false},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, changesData(srv, tt.cmd, tt.args), "%s %v", tt.cmd, tt.args)
	}
}

func FuzzDecodeSnapshot(f *testing.F) {
	valid, err := (&snapshot{Keys: []entry{
		{Key: []byte("k"), Type: typeString, Values: [][]byte{[]byte("v")}, ExpireAt: 1},
		{DB: 15, Key: []byte("z"), Type: typeZSet, Values: [][]byte{[]byte("a")}, Scores: []string{"-inf"}},
	}}).encode()
	require.NoError(f, err)
	f.Add(valid)
	f.Add([]byte(`{"format":"comfyfleet-miniredis-snapshot","version":1,"keys":null}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := decodeSnapshot(data)
		if err != nil {
			return
		}
		again, err := s.encode()
		require.NoError(t, err)
		s2, err := decodeSnapshot(again)
		require.NoError(t, err, "a snapshot that decoded must decode again once encoded")
		assert.Equal(t, s, s2)
	})
}

// snapshotIfChanged is called directly here: with an hour's interval the
// loop never runs it.
func TestSnapshotOnlyWhenChanged(t *testing.T) {
	t.Parallel()
	ctx := ctx(t)
	dir := t.TempDir()
	path := filepath.Join(dir, snapshotName)
	srv, err := Start(Config{Dir: dir, Backend: BackendMiniredis, SnapshotInterval: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Stop() })
	e := srv.impl.(*embedded)
	c := client(t, srv, 0)
	written := func() bool {
		_, err := os.Stat(path)
		if err == nil {
			require.NoError(t, os.Remove(path))
		}
		return err == nil
	}

	require.NoError(t, e.snapshotIfChanged())
	assert.True(t, written(), "the first tick writes")
	require.NoError(t, e.snapshotIfChanged())
	assert.False(t, written(), "nothing changed")

	require.ErrorIs(t, c.Get(ctx, "k").Err(), redis.Nil, "a read")
	require.NoError(t, c.Ping(ctx).Err())
	require.NoError(t, e.snapshotIfChanged())
	assert.False(t, written(), "reads change nothing")

	require.NoError(t, c.Set(ctx, "k", "v", 0).Err())
	require.NoError(t, e.snapshotIfChanged())
	assert.True(t, written(), "a write")
	require.NoError(t, e.snapshotIfChanged())
	assert.False(t, written(), "the settling snapshot finds the same content")
	require.NoError(t, e.snapshotIfChanged())
	assert.False(t, written(), "idle again")
}

func TestMiniredisTTLRunsOnTheClock(t *testing.T) {
	t.Parallel()
	ctx := ctx(t)
	c := client(t, start(t, t.TempDir(), BackendMiniredis), 0)
	require.NoError(t, c.Set(ctx, "k", "v", 50*time.Millisecond).Err())
	assert.Eventually(t, func() bool { return c.Exists(ctx, "k").Val() == 0 }, 10*time.Second, 10*time.Millisecond)
}
