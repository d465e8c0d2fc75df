package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// TestDeadLetterCommands lists a dead letter and replays it; the fleet is
// a NATS server and a Redis of its own (the CLI uses no key prefix).
func TestDeadLetterCommands(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	mr := miniredis.RunT(t)
	ctx := testenv.Context(t, 30*time.Second)
	// The fleet's streams and blob bucket, as a dispatcher makes them.
	b, err := backend.Open(ctx, backend.Config{Name: "test", NATSURL: n.URL, RedisURL: "redis://" + mr.Addr()})
	require.NoError(t, err)
	defer b.Close()

	job := &proto.Job{ID: "dead-cli", Pool: proto.DefaultPool, Lane: proto.LaneBatch, Input: json.RawMessage(`{"workflow":{}}`)}
	_, _, err = b.DB.Create(ctx, rdb.ParamsFor(job), time.Time{}, false)
	require.NoError(t, err)
	cl, err := b.DB.Claim(ctx, rdb.ClaimParams{ID: job.ID, WorkerID: "w1", LeaseTTL: time.Minute})
	require.NoError(t, err)
	_, err = b.DB.Finish(ctx, job.ID, cl.Lease.Attempt, proto.StatusFailed, nil, "boom", true)
	require.NoError(t, err)
	data, err := json.Marshal(job)
	require.NoError(t, err)
	require.NoError(t, b.Queue.PublishDeadLetter(ctx, proto.DefaultPool, job.ID, cl.Lease.Attempt, data, "boom", []string{"attempt 1: boom"}))
	require.NoError(t, b.DB.DeadLettered(ctx, job.ID, cl.Lease.Attempt))
	list, err := b.Queue.DeadLetters(ctx, proto.DefaultPool, 10)
	require.NoError(t, err)
	require.Len(t, list, 1)
	seq := list[0].Seq

	conn := []string{"--nats-url", n.URL, "--redis-url", "redis://" + mr.Addr()}
	cli := func(args ...string) (int, string) {
		var out bytes.Buffer
		code := run(ctx, append(args, conn...), &out, &out)
		return code, out.String()
	}
	code, out := cli("dlq", "list")
	require.Equal(t, exitOK, code, out)
	require.Contains(t, out, "dead-cli")
	require.Contains(t, out, "attempt 1: boom")
	code, out = cli("dlq", "list", "--json", "--pool", "other")
	require.Equal(t, exitOK, code, out)
	require.Equal(t, "[]\n", out)
	code, out = cli("dlq", "replay", fmt.Sprint(seq))
	require.Equal(t, exitOK, code, out)
	require.Contains(t, out, "job dead-cli is IN_QUEUE again")
	rec, err := b.DB.Get(ctx, job.ID)
	require.NoError(t, err)
	require.Equal(t, proto.StatusInQueue, rec.Status)
	code, out = cli("dlq", "replay", fmt.Sprint(seq))
	require.Equal(t, exitNotAllDone, code, out)
	require.Contains(t, out, "no such dead letter")
}

func TestDeadLetterCommandErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		code int
		want string
	}{
		{args: []string{"dlq"}, code: exitUsage, want: "want list or replay"},
		{args: []string{"dlq", "purge"}, code: exitUsage, want: "want list or replay"},
		{args: []string{"dlq", "list", "x"}, code: exitUsage, want: "takes no argument"},
		{args: []string{"dlq", "replay"}, code: exitUsage, want: "name the sequence numbers"},
		{args: []string{"dlq", "replay", "0"}, code: exitUsage, want: "not a sequence number"},
		{args: []string{"dlq", "--help"}, code: exitOK, want: "dead letters"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		code := run(t.Context(), tt.args, &out, &out)
		require.Equal(t, tt.code, code, "%v: %s", tt.args, out.String())
		require.Contains(t, out.String(), tt.want, tt.args)
	}
}
