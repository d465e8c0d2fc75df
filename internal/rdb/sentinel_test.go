package rdb_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

func TestSentinelCheck(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		s       rdb.Sentinel
		wantErr string
	}{
		{name: "none", s: rdb.Sentinel{}},
		{name: "addresses", s: rdb.Sentinel{Addrs: []string{"s1:26379", " 10.0.0.2:26379", "[::1]:26379"}, MasterName: "fleet"}},
		{name: "with credentials", s: rdb.Sentinel{Addrs: []string{"s1:26379"}, Username: "u", Password: "p"}},
		{name: "no port", s: rdb.Sentinel{Addrs: []string{"s1"}}, wantErr: `sentinel address "s1": want host:port`},
		{name: "no host", s: rdb.Sentinel{Addrs: []string{":26379"}}, wantErr: `has no host`},
		{name: "bad port", s: rdb.Sentinel{Addrs: []string{"s1:0"}}, wantErr: `port "0" is not 1 to 65535`},
		{name: "port not a number", s: rdb.Sentinel{Addrs: []string{"s1:abc"}}, wantErr: `port "abc"`},
		{name: "spaced name", s: rdb.Sentinel{Addrs: []string{"s1:26379"}, MasterName: "my master"}, wantErr: "white space"},
		{name: "password alone", s: rdb.Sentinel{Password: "p"}, wantErr: "without sentinel addresses"},
		{name: "user without password", s: rdb.Sentinel{Addrs: []string{"s1:26379"}, Username: "u"}, wantErr: "without its password"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.s.Check()
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestOptionsValidateWait(t *testing.T) {
	t.Parallel()
	require.NoError(t, rdb.Options{WaitReplicas: 2, WaitTimeout: 2 * time.Second}.Validate())
	require.ErrorContains(t, rdb.Options{WaitReplicas: -1}.Validate(), "wait replicas -1 is negative")
	require.ErrorContains(t, rdb.Options{WaitTimeout: 3 * time.Second}.Validate(), "up to 2s")
	require.ErrorContains(t, rdb.Options{WaitTimeout: -time.Second}.Validate(), "wait timeout -1s")
}

// TestWaitReplicasShortfall: on a Redis without replicas, a transition
// that must reach one fails with a *NotReplicatedError within the wait
// timeout, although the master has it; a retry of the same transition
// finds it done (the script's idempotent paths), and without the wait
// the same Redis serves as before.
func TestWaitReplicasShortfall(t *testing.T) {
	t.Parallel()
	client, prefix := testenv.Redis(t)
	ctx := testenv.Context(t, 30*time.Second)
	db := rdb.New(client, rdb.Options{Prefix: prefix, WaitReplicas: 1, WaitTimeout: 50 * time.Millisecond})
	plain := rdb.New(client, rdb.Options{Prefix: prefix})

	start := time.Now()
	_, _, err := db.Create(ctx, rdb.CreateParams{ID: "w1"}, time.Time{}, false)
	var nr *rdb.NotReplicatedError
	require.ErrorAs(t, err, &nr)
	require.Equal(t, 1, nr.Want)
	require.Zero(t, nr.Got)
	require.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond, "WAIT waited")
	require.Contains(t, err.Error(), "create job w1: 0 of the 1 replicas REDIS_WAIT_REPLICAS asks for confirmed the write within 50ms")

	rec, err := plain.Get(ctx, "w1")
	require.NoError(t, err, "the master has the record")
	require.Equal(t, proto.StatusInQueue, rec.Status)

	cl, err := plain.Claim(ctx, rdb.ClaimParams{ID: "w1", WorkerID: "w", Reply: "r", LeaseTTL: time.Minute})
	require.NoError(t, err)
	_, err = db.Finish(ctx, "w1", cl.Lease.Attempt, proto.StatusCompleted, json.RawMessage(`{"images":[]}`), "", false)
	require.ErrorAs(t, err, &nr)
	// The retry finds the write done.
	rec, err = plain.Finish(ctx, "w1", cl.Lease.Attempt, proto.StatusCompleted, json.RawMessage(`{"images":[]}`), "", false)
	require.NoError(t, err)
	require.Equal(t, proto.StatusCompleted, rec.Status)
}

// TestDialThroughSentinel: a DB dialled through Redis Sentinel, waiting
// for one replica per transition, follows the master when it is
// SIGKILLed: once the sentinels promote a replica, the transitions go on
// on the new master (which has never run the transition script before),
// and every transition confirmed before the kill is there.
func TestDialThroughSentinel(t *testing.T) {
	t.Parallel()
	rs := testenv.StartRedisSentinel(t, testenv.SentinelConfig{})
	ctx := testenv.Context(t, 90*time.Second)
	db, err := rdb.Dial(ctx, "redis://127.0.0.1:1/0", nil,
		rdb.Sentinel{Addrs: rs.Sentinels, MasterName: rs.MasterName}, rdb.Options{Prefix: "dial:", WaitReplicas: 1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })

	const n = 50
	leases := map[string]int{}
	for i := range n {
		id := fmt.Sprintf("s%d", i)
		_, _, err := db.Create(ctx, rdb.CreateParams{ID: id}, time.Time{}, false)
		require.NoError(t, err)
		cl, err := db.Claim(ctx, rdb.ClaimParams{ID: id, WorkerID: "w", Reply: "r", LeaseTTL: time.Hour})
		require.NoError(t, err)
		leases[id] = cl.Lease.Attempt
	}
	old := rs.KillMaster()
	now := rs.WaitFailover(old, 30*time.Second)
	t.Logf("master %s killed; the sentinels promoted %s", old, now)

	// The client finds the new master by itself (after the sentinels'
	// +switch-master, or its next dial).
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		_, err := db.Finish(ctx, "s0", leases["s0"], proto.StatusCompleted, json.RawMessage(`{"images":[]}`), "", false)
		assert.NoError(c, err)
	}, 30*time.Second, 50*time.Millisecond, "a transition on the new master")
	for i := range n {
		id := fmt.Sprintf("s%d", i)
		rec, err := db.Get(ctx, id)
		require.NoError(t, err, "job %s confirmed before the kill", id)
		want := proto.StatusInProgress
		if i == 0 {
			want = proto.StatusCompleted
		}
		require.Equal(t, want, rec.Status, id)
		require.Equal(t, leases[id], rec.Attempt, id)
	}
	// The fence holds on the new master.
	_, err = db.Finish(ctx, "s1", leases["s1"]+1, proto.StatusCompleted, nil, "", false)
	require.True(t, errors.Is(err, rdb.ErrStale), "%v", err)
}

// TestDialThroughSentinelWithPasswords: the master's password comes from
// the URL, the sentinels' own from Sentinel.Password; a wrong one of
// either is refused at Dial.
func TestDialThroughSentinelWithPasswords(t *testing.T) {
	t.Parallel()
	rs := testenv.StartRedisSentinel(t, testenv.SentinelConfig{Replicas: 1, Password: "data-pw", SentinelPassword: "watch-pw"})
	ctx := testenv.Context(t, 60*time.Second)
	s := rdb.Sentinel{Addrs: rs.Sentinels, MasterName: rs.MasterName, Password: "watch-pw"}
	db, err := rdb.Dial(ctx, "redis://:data-pw@ignored:6379/0", nil, s, rdb.Options{Prefix: "pw:", WaitReplicas: 1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	_, _, err = db.Create(ctx, rdb.CreateParams{ID: "p1"}, time.Time{}, false)
	require.NoError(t, err)

	_, err = rdb.Dial(ctx, "redis://:wrong@ignored:6379/0", nil, s, rdb.Options{})
	require.ErrorContains(t, err, "WRONGPASS", "a wrong master password")
	bad := s
	bad.Password = "wrong"
	_, err = rdb.Dial(ctx, "redis://:data-pw@ignored:6379/0", nil, bad, rdb.Options{})
	require.ErrorContains(t, err, "all sentinels specified in configuration are unreachable: WRONGPASS", "a wrong sentinel password")
}

func TestDialSentinelRefusesBadSettings(t *testing.T) {
	t.Parallel()
	ctx := testenv.Context(t, 10*time.Second)
	_, err := rdb.Dial(ctx, "redis://127.0.0.1:1/0", nil, rdb.Sentinel{Addrs: []string{"nohost"}}, rdb.Options{})
	require.ErrorContains(t, err, `sentinel address "nohost": want host:port`)
}
