// Package batch is comfyfleet's batch traffic from a terminal: the logic
// behind `comfyfleet submit`, `watch`, `status`, `cancel` and `fleet`.
//
// A batch is a list of items ([Load]: a folder of workflows, a JSONL file of
// RunPod-style inputs, or one workflow expanded by a sweep of [Set]s, whose
// items are named after their values, see [Expand]). Each item becomes one
// job whose id ([JobID]) is derived from the batch id, the item's name and
// its input, so the same command run again names the same jobs, and a
// sweep that grew names its old items' jobs as before: [Runner.Submit] then
// skips items whose results are in the output folder's manifest, follows
// the jobs that are on the fleet, and submits only the missing ones, on
// cf.submit.batch with Nats-Msg-Id = job id (a re-publish is dropped by
// JetStream's de-duplication). With [Options.RetryFailed] or
// [Options.RetryCancelled], an item whose latest job failed or was
// cancelled gets a new try, a job of its own ([AttemptID]); the manifest
// keeps a result per try, the latest deciding.
//
// Before submitting, Submit writes the batch index ([Index], in Redis) so
// that [Runner.Watch], [Runner.Status] and [Runner.Cancel] find a batch by
// its id alone; for batches from other producers, which have no index, they
// fall back to the status records' batch_id field.
//
// Following a batch, the Runner listens to every job's status events
// (cf.events.*) and reads each record again every few seconds in case an
// event was missed. As items finish, their outputs are downloaded from the
// blob store or their S3 URLs into <out>/<item>/<item>_<name>, and a line
// per item is appended to <out>/results.jsonl ([Result]), which is
// rewritten in item order, with every try of an item, when the run ends.
// Ending the run (Ctrl-C) leaves the jobs running on the fleet.
package batch
