package rdb_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
)

// TestReleaseHeldKeepsTheCap: under a tenant's concurrency cap, held jobs
// are released while the tenant has fewer than cap jobs released and not
// ended; a job that ends frees its place, a job that ended while held is
// dropped, and a release asked twice (two dispatchers) takes one place.
func TestReleaseHeldKeepsTheCap(t *testing.T) {
	conformance(t, rdb.Options{}, func(t *testing.T, b *bundle) {
		for _, id := range []string{"a1", "a2", "a3", "a4"} {
			_, _, err := b.db.Create(b.ctx, rdb.CreateParams{ID: id, Tenant: "acme"}, time.Time{}, false)
			require.NoError(t, err)
		}
		release := func(id string, capN int) rdb.HeldRelease {
			t.Helper()
			got, err := b.db.ReleaseHeld(b.ctx, "acme", id, capN)
			require.NoError(t, err)
			return got
		}
		require.Equal(t, rdb.Released, release("a1", 2))
		require.Equal(t, rdb.Released, release("a1", 2), "released twice, one place")
		require.Equal(t, rdb.Released, release("a2", 2))
		require.Equal(t, rdb.Full, release("a3", 2), "two of acme's jobs are out")
		n, err := b.db.Active(b.ctx, "acme")
		require.NoError(t, err)
		require.EqualValues(t, 2, n)

		_, _, err = b.db.Cancel(b.ctx, "a1")
		require.NoError(t, err)
		n, err = b.db.Active(b.ctx, "acme")
		require.NoError(t, err)
		require.EqualValues(t, 1, n, "an ended job leaves the tenant's active set")
		require.Equal(t, rdb.Released, release("a3", 2), "a1's place is free")

		_, _, err = b.db.Cancel(b.ctx, "a4")
		require.NoError(t, err)
		require.Equal(t, rdb.Gone, release("a4", 2), "cancelled while held")
		require.Equal(t, rdb.Gone, release("missing", 0), "no record, no release, cap or not")
		require.Equal(t, rdb.Released, release("a2", 0), "no cap: any job still to run")
	})
}
