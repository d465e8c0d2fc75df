package chaos_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/proto"
)

// load submits n jobs named <name>-<i> and returns their ids; policy,
// when set, gives job i its policy.
func (f *fleet) load(ctx context.Context, name string, n int, policy func(i int) proto.Policy) []string {
	f.t.Helper()
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("%s-%d", name, i)
		job := &proto.Job{ID: ids[i], Input: workflow(i)}
		if policy != nil {
			job.Policy = policy(i)
		}
		f.submit(ctx, job)
	}
	return ids
}

// done counts the jobs of ids that are terminal now.
func (f *fleet) done(ctx context.Context, ids []string) int {
	n := 0
	for _, id := range ids {
		if rec, err := f.b.DB.Get(ctx, id); err == nil && rec.Status.Terminal() {
			n++
		}
	}
	return n
}

// whenDone waits until at least frac of ids are terminal.
func (f *fleet) whenDone(ctx context.Context, ids []string, frac float64) {
	f.t.Helper()
	require.Eventually(f.t, func() bool {
		return float64(f.done(ctx, ids)) >= frac*float64(len(ids))
	}, 60*time.Second, 20*time.Millisecond, "%.0f%% of the jobs done", frac*100)
}

func pause(d time.Duration) <-chan time.Time { return time.After(d) }

// TestWorkersKilledWithSIGKILL: gpuworker processes are SIGKILLed at
// random moments (and replaced); meanwhile some jobs are cancelled and some
// expire in the queue (policy.ttl). Every job ends once: the cancelled ones
// CANCELLED, the expired ones TIMED_OUT, every other one COMPLETED.
func TestWorkersKilledWithSIGKILL(t *testing.T) {
	t.Parallel()
	// A job can lose its worker to more kills than the default three
	// attempts (once, one was on the next worker killed twice running: its
	// redelivery was prefetched at once), so the budget covers every kill
	// a job can take here: a FAILED job is then a fault costing a result.
	f := newFleet(t, fleetConfig{workers: 3, dispatchers: 2, stepDelay: time.Millisecond, maxAttempts: 10})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const n = 500
	ttlJob := func(i int) bool { return i%50 == 25 }
	ids := f.load(ctx, "kill", n, func(i int) proto.Policy {
		if ttlJob(i) {
			return proto.Policy{TTL: 1}
		}
		return proto.Policy{}
	})
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var killed []string
	cancelled := map[string]bool{}
	for i := 0; f.done(ctx, ids) < n*8/10 && ctx.Err() == nil; i++ {
		<-pause(time.Duration(150+rng.IntN(350)) * time.Millisecond)
		killed = append(killed, f.killWorker(rng))
		// Cancel a job that may be queued or running.
		id := ids[rng.IntN(n)]
		if _, err := f.b.Core.Cancel(ctx, id); err == nil {
			cancelled[id] = true
		}
	}
	tl := f.await(ids, 60*time.Second)
	t.Logf("killed %d workers with SIGKILL (%v); cancelled %d jobs", len(killed), killed, len(cancelled))
	ended := map[string]proto.Status{}
	for i, id := range ids {
		switch {
		case cancelled[id]:
			ended[id] = proto.StatusCancelled
		case ttlJob(i):
			ended[id] = proto.StatusTimedOut
		}
	}
	f.check("workers killed", tl, ended)
	require.NotEmpty(t, killed)
	for i, id := range ids {
		if ttlJob(i) && !cancelled[id] {
			require.False(t, tl.reachedGPU[id], "job %s past its TTL reached a GPU", id)
		}
		if cancelled[id] {
			require.Zero(t, tl.completed[id], "cancelled job %s completed", id)
		}
	}
}

// TestNATSRestartedMidLoad: the NATS server (file storage) stops with a
// quarter of the jobs done and comes back on the same port and store.
func TestNATSRestartedMidLoad(t *testing.T) {
	t.Parallel()
	f := newFleet(t, fleetConfig{workers: 2, dispatchers: 2, stepDelay: time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ids := f.load(ctx, "nats", 200, nil)
	f.whenDone(ctx, ids, 0.25)
	f.stopNATS()
	<-pause(700 * time.Millisecond) // an outage, not a synchronisation
	f.startNATS()
	t.Log("NATS server restarted")
	f.check("NATS restarted", f.await(ids, 60*time.Second), nil)
}

// TestNATSClusterLeaderStoppedMidLoad: on a three-node NATS cluster with
// every stream on three nodes (STREAM_REPLICAS=3), the node leading the
// jobs stream stops with a quarter of the jobs done and comes back (same
// store) at half. The processes reconnect to the others, the streams
// elect new leaders, and every job ends once: none lost, none stuck, none
// run to a second COMPLETED.
func TestNATSClusterLeaderStoppedMidLoad(t *testing.T) {
	t.Parallel()
	f := newFleet(t, fleetConfig{workers: 2, dispatchers: 2, stepDelay: time.Millisecond, natsNodes: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ids := f.load(ctx, "cluster", 200, nil)
	f.whenDone(ctx, ids, 0.25)
	s, err := f.js.Stream(ctx, proto.JobsStream)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Len(t, info.Cluster.Replicas, 2, "CF_JOBS has a replica on each of the other nodes")
	leader := f.cluster.Index(info.Cluster.Leader)
	require.GreaterOrEqual(t, leader, 0, "leader %q", info.Cluster.Leader)
	f.cluster.Stop(leader)
	t.Logf("stopped %s, the leader of CF_JOBS", info.Cluster.Leader)
	f.whenDone(ctx, ids, 0.5)
	f.cluster.Start(leader)
	t.Logf("%s started again", info.Cluster.Leader)
	f.check("cluster leader stopped", f.await(ids, 90*time.Second), nil)
}

// TestRedisRestartedMidLoad: redis-server is SIGKILLed with a quarter of
// the jobs done and started again on its append-only file.
func TestRedisRestartedMidLoad(t *testing.T) {
	t.Parallel()
	f := newFleet(t, fleetConfig{workers: 2, dispatchers: 2, stepDelay: time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ids := f.load(ctx, "redis", 200, nil)
	f.whenDone(ctx, ids, 0.25)
	f.redis.kill()
	<-pause(700 * time.Millisecond)
	f.startRedis()
	t.Log("redis-server SIGKILLed and restarted")
	f.check("Redis restarted", f.await(ids, 60*time.Second), nil)
}

// TestRedisMasterKilledMidLoad: Redis runs as a master, two replicas and
// three sentinels (real redis-server processes, no persistence), every
// process of the fleet reaching the master through the sentinels and
// waiting for one replica per transition (REDIS_WAIT_REPLICAS=1). The
// master is SIGKILLed with a quarter of the jobs done; the sentinels
// promote a replica, the processes follow it, and every job ends once:
// none lost with the dead master's memory, none stuck, none run to a
// second COMPLETED.
func TestRedisMasterKilledMidLoad(t *testing.T) {
	t.Parallel()
	f := newFleet(t, fleetConfig{workers: 2, dispatchers: 2, stepDelay: time.Millisecond, redisSentinel: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ids := f.load(ctx, "sentinel", 200, nil)
	f.whenDone(ctx, ids, 0.25)
	old := f.sentinel.KillMaster()
	t.Logf("master %s SIGKILLed with %d of %d jobs done", old, f.done(ctx, ids), len(ids))
	now := f.sentinel.WaitFailover(old, 60*time.Second)
	t.Logf("the sentinels promoted %s; %d jobs done", now, f.done(ctx, ids))
	f.check("Redis master killed", f.await(ids, 90*time.Second), nil)
}

// TestRedisFailoverLosesNoConfirmedTransition: as
// TestRedisMasterKilledMidLoad, but the replication stream to both
// replicas is held back for a while before the master is SIGKILLed, and
// what was held dies with it: the failover loses every write the master
// took meanwhile, as an asynchronous replica's lag would. The processes
// wait for one replica per transition (REDIS_WAIT_REPLICAS=1), so no
// transition they acted on (an ack, an event) was among them: their
// transitions failed and were tried again on the new master, and every
// job ends once, none stuck.
func TestRedisFailoverLosesNoConfirmedTransition(t *testing.T) {
	t.Parallel()
	f := newFleet(t, fleetConfig{workers: 2, dispatchers: 2, stepDelay: time.Millisecond, redisSentinel: true, replicationProxied: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ids := f.load(ctx, "lag", 200, nil)
	f.whenDone(ctx, ids, 0.25)
	f.sentinel.HoldReplication()
	before := f.done(ctx, ids)
	<-pause(1500 * time.Millisecond) // the replicas' lag, not a synchronisation
	t.Logf("replication held for 1.5s: %d jobs done before, %d after (on the master alone)", before, f.done(ctx, ids))
	old := f.sentinel.KillMaster()
	now := f.sentinel.WaitFailover(old, 60*time.Second)
	t.Logf("master %s SIGKILLed with what it held; the sentinels promoted %s; %d jobs done", old, now, f.done(ctx, ids))
	f.check("Redis failover lost the held writes", f.await(ids, 90*time.Second), nil)
}

// TestDispatcherReplicaKilled: of two dispatcher replicas, one is
// SIGKILLed while jobs are still being submitted; the other admits the
// rest and sweeps alone.
func TestDispatcherReplicaKilled(t *testing.T) {
	t.Parallel()
	f := newFleet(t, fleetConfig{workers: 2, dispatchers: 2, stepDelay: time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	first := f.load(ctx, "disp-a", 70, nil)
	f.dispatchers[0].kill()
	t.Log("dispatcher-1 SIGKILLed")
	ids := append(first, f.load(ctx, "disp-b", 130, nil)...)
	f.check("dispatcher killed", f.await(ids, 60*time.Second), nil)
}

// TestComfyUIKilledMidJob: the emulated ComfyUI processes restart at
// random moments (the running prompt dies without a trace) and one goes
// down for a while; the jobs are retried elsewhere or again, and every one
// completes.
func TestComfyUIKilledMidJob(t *testing.T) {
	t.Parallel()
	// Each restart (at most 12) and the outage cost the prompt they hit a
	// counted attempt; with more attempts than the case has faults, no job
	// can use its attempts up by the luck of the draw, so every job must
	// complete. Running out of attempts is TestRetriesDeadLetterAndReplay's.
	f := newFleet(t, fleetConfig{workers: 2, dispatchers: 2, stepDelay: 2 * time.Millisecond, maxAttempts: 20})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ids := f.load(ctx, "comfy", 200, nil)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	restarts := 0
	for restarts < 12 && f.done(ctx, ids) < 150 && ctx.Err() == nil {
		<-pause(time.Duration(100+rng.IntN(200)) * time.Millisecond)
		f.sims[rng.IntN(len(f.sims))].Restart()
		restarts++
		if restarts == 3 {
			f.sims[0].SetDown(true)
			<-pause(500 * time.Millisecond)
			f.sims[0].SetDown(false)
		}
	}
	t.Logf("ComfyUI restarted %d times, down once", restarts)
	f.check("ComfyUI killed", f.await(ids, 60*time.Second), nil)
}

// TestCancelAndPurgeUnderLoad: through the RunPod endpoint API, a backlog
// is purged (/purge-queue) and a running job cancelled (/cancel/{id})
// while the worker is SIGKILLed once; purged and cancelled jobs end
// CANCELLED and never complete, and every other job completes.
func TestCancelAndPurgeUnderLoad(t *testing.T) {
	t.Parallel()
	f := newFleet(t, fleetConfig{workers: 1, dispatchers: 1, stepDelay: 5 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	api := httptest.NewServer(runpod.NewAPI(runpod.Config{}, runpod.Deps{Queue: f.b.Queue, Core: f.b.Core, DB: f.b.DB, Blobs: f.b.Blobs, Logger: f.log}))
	defer api.Close()
	post := func(path string, body any) map[string]any {
		data, err := json.Marshal(body)
		require.NoError(t, err)
		resp, err := http.Post(api.URL+path, "application/json", bytes.NewReader(data))
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		var out map[string]any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
		return out
	}
	var ids []string
	for i := range 120 {
		out := post("/run", map[string]json.RawMessage{"input": workflow(i)})
		ids = append(ids, out["id"].(string))
	}
	f.whenDone(ctx, ids, 0.05)
	var running string
	require.Eventually(t, func() bool {
		for _, id := range ids {
			if rec, err := f.b.DB.Get(ctx, id); err == nil && rec.Status == proto.StatusInProgress {
				running = id
				return true
			}
		}
		return false
	}, 10*time.Second, 5*time.Millisecond)
	out := post("/cancel/"+running, nil)
	t.Logf("cancel %s: %v", running, out)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	f.killWorker(rng)
	purged := post("/purge-queue", nil)
	removed := int(purged["removed"].(float64))
	t.Logf("purge-queue removed %d jobs; worker SIGKILLed once", removed)
	require.Positive(t, removed)
	tl := f.await(ids, 60*time.Second)
	cancelled := 0
	if out["status"] == string(proto.StatusCancelled) {
		cancelled = 1
		require.Equal(t, proto.StatusCancelled, tl.final[running])
	}
	// purge-queue names no ids, only how many: the CANCELLED jobs are
	// exactly that many plus the cancelled one, none of them completed,
	// and every other job must be COMPLETED.
	ended := map[string]proto.Status{}
	for id, st := range tl.final {
		if st == proto.StatusCancelled {
			ended[id] = st
			require.Zero(t, tl.completed[id], "cancelled job %s completed", id)
		}
	}
	require.Len(t, ended, removed+cancelled, "purged and cancelled")
	f.check("cancel and purge", tl, ended)
}
