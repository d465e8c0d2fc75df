package rdb_test

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// BenchmarkTransition runs the status script (transition.lua) the way a
// job meets it, on each backend: a new job's admission, the redelivery of
// its submission, a job's whole life (admit, claim, finish: the three
// calls every job makes), and admissions from many goroutines at once, as
// the dispatcher makes them (INTAKE_CONCURRENCY), where the round trips
// overlap.
func BenchmarkTransition(b *testing.B) {
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			s := setup(b, be, rdb.Options{})
			var n atomic.Int64
			params := func() rdb.CreateParams {
				return rdb.CreateParams{ID: "bench-" + strconv.FormatInt(n.Add(1), 10), Pool: proto.DefaultPool,
					Lane: proto.LaneBatch, Source: proto.SourceBatch, BatchID: "sweep-1"}
			}
			b.Run("admit", func(b *testing.B) {
				b.ReportAllocs()
				for range b.N {
					if _, _, err := s.db.Admit(s.ctx, "7", params(), ""); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("admit-redelivered", func(b *testing.B) {
				p := params()
				if _, _, err := s.db.Admit(s.ctx, "7", p, ""); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				for range b.N {
					if adm, _, err := s.db.Admit(s.ctx, "7", p, ""); err != nil || adm != rdb.Same {
						b.Fatal(adm, err)
					}
				}
			})
			b.Run("life", func(b *testing.B) {
				b.ReportAllocs()
				for range b.N {
					p := params()
					if _, _, err := s.db.Admit(s.ctx, "7", p, ""); err != nil {
						b.Fatal(err)
					}
					cl, err := s.db.Claim(s.ctx, rdb.ClaimParams{ID: p.ID, WorkerID: "w1", Taker: "t1", Reply: "$JS.ACK.x", LeaseTTL: time.Minute})
					if err != nil {
						b.Fatal(err)
					}
					if _, err := s.db.Finish(s.ctx, p.ID, cl.Lease.Attempt, proto.StatusCompleted, []byte(`{"images":[]}`), "", false); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("admit-parallel", func(b *testing.B) {
				b.ReportAllocs()
				b.SetParallelism(16)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, _, err := s.db.Admit(s.ctx, "7", params(), ""); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		})
	}
}
