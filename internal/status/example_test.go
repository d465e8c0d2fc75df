package status_test

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/proto"
)

// The happy path: the dispatcher creates the record, a worker claims the
// job and finishes it; after that the record is final.
func Example() {
	mr, err := miniredis.Run() // or a real Redis
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	clock := &fakeClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	store := status.NewStore(rdb, status.Options{Clock: clock})
	ctx := context.Background()

	// Dispatcher: the job was admitted.
	rec, created, err := store.Create(ctx, status.CreateParams{ID: "job-1", Pool: "default", Lane: proto.LaneInteractive})
	if err != nil {
		panic(err)
	}
	fmt.Println(rec.Status, "created:", created)

	// Worker: picks the job up 250 ms later.
	clock.Advance(250 * time.Millisecond)
	attempt, rec, err := store.Claim(ctx, "job-1", "gpu-0")
	if err != nil {
		panic(err)
	}
	fmt.Println(rec.Status, "attempt:", attempt, "worker:", rec.WorkerID, "delayTime:", rec.DelayTime())

	// Worker: ComfyUI ran for 3.5 s.
	clock.Advance(3500 * time.Millisecond)
	output := json.RawMessage(`{"images":[{"filename":"ComfyUI_00001_.png","type":"s3_url","data":"https://bucket/job-1/ComfyUI_00001_.png"}]}`)
	rec, err = store.Finish(ctx, "job-1", attempt, proto.StatusCompleted, output, "")
	if err != nil {
		panic(err)
	}
	fmt.Println(rec.Status, "executionTime:", rec.ExecutionTime(), "output:", string(rec.Output))

	// Anyone else's write is refused now.
	_, err = store.Cancel(ctx, "job-1")
	fmt.Println(err)
	// Output:
	// IN_QUEUE created: true
	// IN_PROGRESS attempt: 1 worker: gpu-0 delayTime: 250ms
	// COMPLETED executionTime: 3.5s output: {"images":[{"filename":"ComfyUI_00001_.png","type":"s3_url","data":"https://bucket/job-1/ComfyUI_00001_.png"}]}
	// cancel job job-1: COMPLETED -> CANCELLED refused: job is in a terminal state
}
