package serverless

import (
	"net/url"
	"strconv"
	"strings"
)

// urls builds every URL the worker calls from RunPod's templates, with
// string operations only, exactly as runpod-python does (§A.3): "$ID" in
// the take template becomes the worker id (and "$RUNPOD_POD_ID" there is
// left alone); "$RUNPOD_POD_ID" in the others becomes the worker id and
// "$ID" the job id; parameters are appended with "&" whether or not the
// template has a "?".
type urls struct {
	jobGet string // the take template with $ID replaced
	done   string // the output template with $RUNPOD_POD_ID replaced
	stream string // the stream template with $RUNPOD_POD_ID replaced
	ping   string // the ping template with $RUNPOD_POD_ID replaced
	noStop bool   // the take template has no "/job-take/"
}

func newURLs(getJob, postOutput, postStream, ping, workerID string) urls {
	return urls{
		jobGet: strings.ReplaceAll(getJob, "$ID", workerID),
		done:   strings.ReplaceAll(postOutput, "$RUNPOD_POD_ID", workerID),
		stream: strings.ReplaceAll(postStream, "$RUNPOD_POD_ID", workerID),
		ping:   strings.ReplaceAll(ping, "$RUNPOD_POD_ID", workerID),
		noStop: !strings.Contains(getJob, "/job-take/"),
	}
}

func flag01(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// take is the single-job take URL.
func (u urls) take(inProgress bool) string {
	return u.jobGet + "&job_in_progress=" + flag01(inProgress)
}

// takeBatch is the batch take URL for n jobs.
func (u urls) takeBatch(n int, inProgress bool) string {
	return strings.ReplaceAll(u.jobGet, "/job-take/", "/job-take-batch/") +
		"&batch_size=" + strconv.Itoa(n) + "&job_in_progress=" + flag01(inProgress)
}

// stop is the job-stop URL; ok is false when the take template has no
// "/job-take/" to derive it from (the SDK then has no stop channel).
func (u urls) stop() (string, bool) {
	if u.noStop {
		return "", false
	}
	return strings.ReplaceAll(u.jobGet, "/job-take/", "/job-stop/"), true
}

// doneURL is where a job's result (and progress) is posted.
func (u urls) doneURL(jobID string, isStream bool) string {
	return strings.ReplaceAll(u.done, "$ID", jobID) + "&isStream=" + strconv.FormatBool(isStream)
}

// streamURL is where a job's stream chunks are posted; always
// isStream=false, as the SDK sends.
func (u urls) streamURL(jobID string) string {
	return strings.ReplaceAll(u.stream, "$ID", jobID) + "&isStream=false"
}

// pingURL adds the ping's parameters the way Python's requests does:
// after "&" when the URL has a query, after "?" otherwise; job_id is one
// comma-joined value, left out when no job is held.
func (u urls) pingURL(jobIDs []string, version string) string {
	q := ""
	if len(jobIDs) > 0 {
		q = "job_id=" + url.QueryEscape(strings.Join(jobIDs, ",")) + "&"
	}
	q += "runpod_version=" + url.QueryEscape(version)
	sep := "?"
	if strings.Contains(u.ping, "?") {
		sep = "&"
		if strings.HasSuffix(u.ping, "?") || strings.HasSuffix(u.ping, "&") {
			sep = ""
		}
	}
	return u.ping + sep + q
}
