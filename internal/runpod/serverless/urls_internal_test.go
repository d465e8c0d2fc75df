package serverless

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestURLs pins runpod-protocol.md §A.3, row by row.
func TestURLs(t *testing.T) {
	t.Parallel()
	b := "http://h/v2/ep1/"
	u := newURLs(b+"job-take/$ID?gpu=TEST", b+"job-done/$RUNPOD_POD_ID/$ID?gpu=TEST", b+"job-stream/$RUNPOD_POD_ID/$ID?gpu=TEST", b+"ping/$RUNPOD_POD_ID?gpu=TEST", "worker-1")
	require.Equal(t, b+"job-take/worker-1?gpu=TEST&job_in_progress=0", u.take(false))
	require.Equal(t, b+"job-take/worker-1?gpu=TEST&job_in_progress=1", u.take(true))
	require.Equal(t, b+"job-take-batch/worker-1?gpu=TEST&batch_size=3&job_in_progress=0", u.takeBatch(3, false))
	stop, ok := u.stop()
	require.True(t, ok)
	require.Equal(t, b+"job-stop/worker-1?gpu=TEST", stop)
	require.Equal(t, b+"job-done/worker-1/job-ok?gpu=TEST&isStream=false", u.doneURL("job-ok", false))
	require.Equal(t, b+"job-done/worker-1/g-ok?gpu=TEST&isStream=true", u.doneURL("g-ok", true))
	require.Equal(t, b+"job-stream/worker-1/g-ok?gpu=TEST&isStream=false", u.streamURL("g-ok"))
	require.Equal(t, b+"ping/worker-1?gpu=TEST&runpod_version=unknown", u.pingURL(nil, "unknown"))
	require.Equal(t, b+"ping/worker-1?gpu=TEST&job_id=aj-3%2Caj-1%2Caj-2&runpod_version=unknown", u.pingURL([]string{"aj-3", "aj-1", "aj-2"}, "unknown"))

	// Templates without "?" and with $RUNPOD_POD_ID in GET_JOB (RunPod's
	// own harness): the SDK leaves it, and appends "&…" to the path.
	u = newURLs(b+"job-take/$RUNPOD_POD_ID", b+"job-done/$RUNPOD_POD_ID/$ID", "", b+"ping/$RUNPOD_POD_ID", "worker-1")
	require.Equal(t, b+"job-take/$RUNPOD_POD_ID&job_in_progress=0", u.take(false))
	stop, _ = u.stop()
	require.Equal(t, b+"job-stop/$RUNPOD_POD_ID", stop)
	require.Equal(t, b+"job-done/worker-1/r-1&isStream=false", u.doneURL("r-1", false))
	require.Equal(t, b+"ping/worker-1?job_id=a&runpod_version=v", u.pingURL([]string{"a"}, "v"))

	// No "/job-take/" in the template: no stop channel.
	u = newURLs(b+"take/$ID?x=1", b+"done/$ID", "", "", "w")
	_, ok = u.stop()
	require.False(t, ok)
	require.Equal(t, b+"take/w?x=1&batch_size=2&job_in_progress=1", u.takeBatch(2, true), "nothing to replace: the SDK's batch URL is the take URL")
}

func TestDecodeJobs(t *testing.T) {
	t.Parallel()
	jobs, err := decodeJobs([]byte(`{"id":"a","input":{"x":1},"s3Config":{"accessId":"i","accessSecret":"s","bucketName":"b","endpointUrl":"https://e"},"webhook":"http://h","batchId":"b1"}`))
	require.NoError(t, err)
	require.Len(t, jobs, 1)
	require.Equal(t, "a", jobs[0].ID)
	require.JSONEq(t, `{"x":1}`, string(jobs[0].Input))
	require.Equal(t, "s", jobs[0].S3Config.AccessSecret)

	jobs, err = decodeJobs([]byte(`[{"id":"a","input":null},{"id":"b"},{"input":{}},5,{"id":"c","input":{}}]`))
	require.NoError(t, err)
	require.Equal(t, []string{"a", "c"}, []string{jobs[0].ID, jobs[1].ID}, "jobs without id or input are dropped")

	_, err = decodeJobs([]byte(`{"id":"a"}`))
	require.ErrorContains(t, err, "job has missing field(s): id or input")
	jobs, err = decodeJobs([]byte(`[]`))
	require.NoError(t, err)
	require.Empty(t, jobs)
	_, err = decodeJobs([]byte(`"x"`))
	require.Error(t, err)
}

func FuzzDecodeJobs(f *testing.F) {
	f.Add([]byte(`{"id":"a","input":{"workflow":{}}}`))
	f.Add([]byte(`[{"id":"a","input":1},{"id":2}]`))
	f.Add([]byte(`{"id":"a","input":{},"s3Config":5}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		jobs, err := decodeJobs(data)
		if err != nil && len(jobs) > 0 {
			t.Fatal("jobs with an error")
		}
		for _, j := range jobs {
			if j.ID == "" || j.Input == nil {
				t.Fatalf("accepted a job without id or input: %+v", j)
			}
		}
	})
}
