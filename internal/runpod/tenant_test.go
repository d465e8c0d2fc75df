package runpod_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/auth"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/proto"
)

func tenantKeys(t *testing.T) *auth.Keyring {
	t.Helper()
	k, err := auth.ParseKeyring(map[auth.Role][]string{
		auth.Tenant: {"acme:key-a", "beta:key-b"}, auth.Admin: {"ops:key-admin"},
	})
	require.NoError(t, err)
	return k
}

// TestTenantsSeeTheirOwnJobsOnly replays the finding "key B can read the
// status of, cancel, retry and purge key A's jobs": every route that names
// a job answers 404 for another tenant's, exactly as for a job that does
// not exist, and purge-queue purges the caller's jobs alone. An admin key
// sees every job.
func TestTenantsSeeTheirOwnJobsOnly(t *testing.T) {
	t.Parallel()
	b := setup(t, runpod.Config{Keys: tenantKeys(t)})
	a, bb, admin := []string{"Authorization", "Bearer key-a"}, []string{"Authorization", "Bearer key-b"}, []string{"Authorization", "key-admin"}
	run := func(key []string) string {
		code, out := b.do(t, "POST", "/run", `{"input":{"workflow":`+workflow+`}}`, key...)
		require.Equal(t, http.StatusOK, code, "%v", out)
		return out["id"].(string)
	}
	jobA := run(a)
	jobB := run(bb)

	missing := "job " + jobA + " not found (unknown, or its result expired)"
	for _, r := range []struct{ method, path string }{
		{"GET", "/status/" + jobA}, {"POST", "/status/" + jobA}, {"GET", "/v2/ep/status-sync/" + jobA + "?wait=1000"},
		{"GET", "/stream/" + jobA + "?wait=0"}, {"POST", "/cancel/" + jobA}, {"POST", "/retry/" + jobA},
	} {
		code, out := b.do(t, r.method, r.path, "", bb...)
		require.Equal(t, http.StatusNotFound, code, "%s %s as beta: %v", r.method, r.path, out)
		require.Equal(t, missing, out["error"], "%s %s: the same answer as for a job that does not exist", r.method, r.path)
	}
	code, out := b.do(t, "GET", "/status/"+jobA, "", a...)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "IN_QUEUE", out["status"], "beta's cancel changed nothing")
	code, _ = b.do(t, "GET", "/status/"+jobA, "", admin...)
	require.Equal(t, http.StatusOK, code, "an admin sees every tenant's job")

	// A retry of acme's failed job by beta is 404 too.
	_, err := b.db.Fail(context.Background(), jobA, 0, "boom")
	require.NoError(t, err)
	code, out = b.do(t, "POST", "/retry/"+jobA, "", bb...)
	require.Equal(t, http.StatusNotFound, code, "%v", out)
	code, out = b.do(t, "GET", "/status/"+jobA, "", a...)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "FAILED", out["status"])

	// purge-queue: beta's purge leaves acme's jobs; acme's purges its own.
	jobA2 := run(a)
	require.Equal(t, "acme", b.submittedAs(t, "acme", jobA2).Tenant, "submitted on cf.submit.api.acme")
	code, out = b.do(t, "POST", "/purge-queue", "", bb...)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, float64(1), out["removed"], "beta's own job only")
	code, out = b.do(t, "GET", "/status/"+jobA2, "", a...)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "IN_QUEUE", out["status"])
	code, out = b.do(t, "GET", "/status/"+jobB, "", bb...)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "CANCELLED", out["status"])
	code, out = b.do(t, "POST", "/purge-queue", "", a...)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, float64(1), out["removed"])
}

// TestInputBlobKeysStayInTheCallersNamespace replays the finding `a
// client-supplied blob key ("blob":"out/<job>/1/9/x.png") loads another
// job's output`: the API refuses a key outside the caller's inputs.
func TestInputBlobKeysStayInTheCallersNamespace(t *testing.T) {
	t.Parallel()
	b := setup(t, runpod.Config{Keys: tenantKeys(t)})
	for _, key := range []string{"out/some-job/1/9/ComfyUI_00001_.png", "in/acme/j/x.png", "in/beta/../acme/x.png"} {
		code, out := b.do(t, "POST", "/run", `{"input":{"workflow":{},"images":[{"name":"x.png","blob":"`+key+`"}]}}`, "Authorization", "key-b")
		require.Equal(t, http.StatusBadRequest, code, key)
		require.Contains(t, out["error"], `images[0].blob: key "`+key+`" is not in this tenant's inputs (in/beta/…)`)
	}
	code, out := b.do(t, "POST", "/run", `{"input":{"workflow":{},"images":[{"name":"x.png","blob":"in/beta/mine/x.png"}]}}`, "Authorization", "key-b")
	require.Equal(t, http.StatusOK, code, "%v", out)
}

// TestCrossSitePostsAreRefused replays the finding "a text/plain POST to
// /run or /purge-queue from any web page works": without keys a page's
// cross-origin post gets 403, and a form-typed body 415 even without an
// Origin; curl-like clients are unaffected.
func TestCrossSitePostsAreRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, runpod.Config{})
	body := `{"input":{"workflow":{}}}`
	for _, path := range []string{"/run", "/purge-queue", "/v2/ep/runsync"} {
		code, out := b.do(t, "POST", path, body, "Origin", "https://evil.example", "Content-Type", "text/plain")
		require.Equal(t, http.StatusForbidden, code, path)
		require.Contains(t, out["error"], "cross-origin request from https://evil.example refused")
		code, out = b.do(t, "POST", path, body, "Content-Type", "text/plain")
		require.Equal(t, http.StatusUnsupportedMediaType, code, path)
		require.Contains(t, out["error"], "Content-Type must be application/json")
	}
	code, out := b.do(t, "POST", "/run", body)
	require.Equal(t, http.StatusOK, code, "%v", out)
	require.Equal(t, proto.DefaultTenant, b.submittedAs(t, proto.DefaultTenant, out["id"].(string)).Tenant)
}
