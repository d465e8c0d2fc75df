package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
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
	require.NoError(t, b.Queue.PublishDeadLetter(ctx, proto.DefaultPool, job.ID, cl.Lease.Attempt, data, "boom", []string{"attempt 1: boom"}, nil))
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

// TestDeadLetterReplayWithSecrets: a dead letter that lost its secrets is
// replayed with those of --secrets, or with the worker's own settings,
// and the CLI says which.
func TestDeadLetterReplayWithSecrets(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	mr := miniredis.RunT(t)
	ctx := testenv.Context(t, 30*time.Second)
	b, err := backend.Open(ctx, backend.Config{Name: "test", NATSURL: n.URL, RedisURL: "redis://" + mr.Addr()})
	require.NoError(t, err)
	defer b.Close()
	deadLetter := func(id string) uint64 {
		job := &proto.Job{ID: id, Pool: proto.DefaultPool, Lane: proto.LaneBatch,
			Input:    json.RawMessage(`{"workflow":{},"comfy_org_api_key":"ck-old"}`),
			S3Config: &proto.S3Config{AccessID: "a-old", AccessSecret: "s-old", BucketName: "b", EndpointURL: "https://s3.example.com"}}
		_, _, err := b.DB.Create(ctx, rdb.ParamsFor(job), time.Time{}, false)
		require.NoError(t, err)
		cl, err := b.DB.Claim(ctx, rdb.ClaimParams{ID: id, WorkerID: "w1", LeaseTTL: time.Minute})
		require.NoError(t, err)
		_, err = b.DB.Finish(ctx, id, cl.Lease.Attempt, proto.StatusFailed, nil, "boom", true)
		require.NoError(t, err)
		data, err := json.Marshal(job)
		require.NoError(t, err)
		stripped, removed, err := proto.StripSecrets(data)
		require.NoError(t, err)
		require.NoError(t, b.Queue.PublishDeadLetter(ctx, proto.DefaultPool, id, cl.Lease.Attempt, stripped, "boom", nil, removed))
		list, err := b.Queue.DeadLetters(ctx, proto.DefaultPool, 10)
		require.NoError(t, err)
		return list[len(list)-1].Seq
	}
	conn := []string{"--nats-url", n.URL, "--redis-url", "redis://" + mr.Addr()}
	cli := func(args ...string) (int, string) {
		var out bytes.Buffer
		code := run(ctx, append(args, conn...), &out, &out)
		return code, out.String()
	}
	file := filepath.Join(t.TempDir(), "secrets.json")
	require.NoError(t, os.WriteFile(file, []byte(`{"comfy_org_api_key":"ck-new","s3Config":{"accessId":"a-new","accessSecret":"s-new"}}`), 0o600))

	code, out := cli("dlq", "replay", fmt.Sprint(deadLetter("given")), "--secrets", file)
	require.Equal(t, exitOK, code, out)
	require.Contains(t, out, "job given is IN_QUEUE again; comfy_org_api_key from --secrets; s3Config from --secrets")
	code, out = cli("dlq", "replay", fmt.Sprint(deadLetter("own")))
	require.Equal(t, exitOK, code, out)
	require.Contains(t, out, "job own is IN_QUEUE again; comfy_org_api_key: the worker's own (COMFY_ORG_API_KEY); s3Config: the worker's own (BUCKET_*, the s3Config dropped)")
	for _, s := range []string{"ck-new", "s-new", "ck-old", "s-old"} {
		require.NotContains(t, out, s)
	}

	require.NoError(t, os.WriteFile(file, []byte(`{"s3Config":{"accessId":"a-new"}}`), 0o600))
	code, out = cli("dlq", "replay", "1", "--secrets", file)
	require.Equal(t, exitUsage, code, out)
	require.Contains(t, out, "--secrets: s3Config needs both accessId and accessSecret")
	code, out = cli("dlq", "list", "--secrets", file)
	require.Equal(t, exitUsage, code, out)
	require.Contains(t, out, "--secrets is for replay")
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
