package rdb_test

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// The happy path: the dispatcher admits the job, a worker claims it under
// a lease and finishes it; after that the record is final.
func Example() {
	mr, err := miniredis.Run() // or a real Redis
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer client.Close()
	db := rdb.New(client, rdb.Options{})
	ctx := context.Background()

	// Dispatcher: the submission with intake sequence 1 is admitted.
	adm, rec, err := db.Admit(ctx, "1", rdb.CreateParams{ID: "job-1", Pool: "default", Lane: proto.LaneInteractive}, "")
	if err != nil {
		panic(err)
	}
	fmt.Println(rec.Status, "created:", adm == rdb.Created)

	// Worker: claims it, with a lease naming its delivery.
	c, err := db.Claim(ctx, rdb.ClaimParams{ID: "job-1", WorkerID: "gpu-0", Reply: "$JS.ACK.x", LeaseTTL: 15 * time.Second})
	if err != nil {
		panic(err)
	}
	fmt.Println(c.Record.Status, "attempt:", c.Lease.Attempt, "worker:", c.Record.WorkerID)

	// Worker: done.
	output := json.RawMessage(`{"images":[{"filename":"ComfyUI_00001_.png","type":"s3_url","data":"https://bucket/job-1/ComfyUI_00001_.png"}]}`)
	rec, err = db.Finish(ctx, "job-1", c.Lease.Attempt, proto.StatusCompleted, output, "", false)
	if err != nil {
		panic(err)
	}
	fmt.Println(rec.Status, "output:", string(rec.Output))

	// Anyone else's write is refused now.
	_, _, err = db.Cancel(ctx, "job-1")
	fmt.Println(err)
	// Output:
	// IN_QUEUE created: true
	// IN_PROGRESS attempt: 1 worker: gpu-0
	// COMPLETED output: {"images":[{"filename":"ComfyUI_00001_.png","type":"s3_url","data":"https://bucket/job-1/ComfyUI_00001_.png"}]}
	// cancel job job-1 (COMPLETED): job is in a terminal state
}
