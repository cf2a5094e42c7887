package sqlstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
)

// Buy throughput: concurrent buyers (8 per core by default) on one product, the
// shape of a flash sale, every buy a new idempotency key. Reported: buys/s,
// latency percentiles, and errors (a buy that failed rather than being
// refused). Figures go to docs/benchmarks.md with the command that made them.

func BenchmarkBuy(b *testing.B) {
	b.Run("SQLite", func(b *testing.B) { benchBuy(b, openTestSQLite(b), 0) })
	b.Run("Postgres", func(b *testing.B) { benchBuy(b, openTestPostgres(b, postgresDSN(b)), 0) })
}

// BenchmarkSQLiteTuning measures the SQLite choices against their
// alternatives: no FIFO queue, synchronous=NORMAL, more writer connections
// and deferred transactions. Every 4th buyer cancels right away: Cancel reads
// before it writes, the pattern that meets SQLITE_BUSY in a deferred
// transaction.
func BenchmarkSQLiteTuning(b *testing.B) {
	variants := []struct {
		name string
		tune sqliteTuning
	}{
		{"default-1writer-immediate-full", sqliteDefaults()},
		{"1writer-immediate-full-noqueue", sqliteTuning{writers: 1, txlock: "immediate", synchronous: "FULL"}},
		{"1writer-immediate-normal", sqliteTuning{writers: 1, txlock: "immediate", synchronous: "NORMAL", queue: true}},
		{"8writers-immediate-full", sqliteTuning{writers: 8, txlock: "immediate", synchronous: "FULL"}},
		{"8writers-deferred-full", sqliteTuning{writers: 8, txlock: "deferred", synchronous: "FULL"}},
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			s, err := openSQLite(context.Background(), filepath.Join(b.TempDir(), "vitrine.db"), v.tune)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			benchBuy(b, s, 4)
		})
	}
}

// benchParallelism is buyers per core: 8, or $VITRINE_BENCH_PARALLELISM to
// see how a store holds up under a bigger crowd.
func benchParallelism(b *testing.B) int {
	v := os.Getenv("VITRINE_BENCH_PARALLELISM")
	if v == "" {
		return 8
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("VITRINE_BENCH_PARALLELISM=%q: want a positive number", v)
	}
	return n
}

// benchBuy runs buys; with cancelEvery > 0, every cancelEvery-th buy is
// cancelled by its viewer right after (one op = buy + cancel).
func benchBuy(b *testing.B, s *Store, cancelEvery int64) {
	ctx := context.Background()
	now := time.Now()
	if _, err := s.CreateProduct(ctx, product("bench-1", overlay.MaxStock, 0)); err != nil {
		b.Fatal(err)
	}
	if _, err := s.StartSale(ctx, overlay.Sale{Stream: "live", SKU: "bench-1", StartsAt: now, EndsAt: now.Add(24 * time.Hour)}, now); err != nil {
		b.Fatal(err)
	}
	var seq, failed atomic.Int64
	var mu sync.Mutex
	var latencies []time.Duration
	var firstErr error
	b.SetParallelism(benchParallelism(b))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			n := seq.Add(1)
			req := buyReq("bench-1", fmt.Sprintf("viewer-%d", n%1000), fmt.Sprintf("key-bench-%09d", n), 1)
			start := time.Now()
			res, err := s.Buy(ctx, req, time.Now(), time.Hour)
			mine = append(mine, time.Since(start))
			if err == nil && res.Outcome != overlay.OutcomeReserved {
				err = fmt.Errorf("outcome %s", res.Outcome)
			}
			if err == nil && cancelEvery > 0 && n%cancelEvery == 0 {
				_, err = s.Cancel(ctx, res.Order.ID, req.ViewerID, time.Now())
			}
			if err != nil {
				failed.Add(1)
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}
		mu.Lock()
		latencies = append(latencies, mine...)
		mu.Unlock()
	})
	b.StopTimer()
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		if len(latencies) == 0 {
			return 0
		}
		return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "buys/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(failed.Load()), "errors")
	if firstErr != nil {
		msg := firstErr.Error()
		if strings.Contains(msg, "SQLITE_BUSY") || strings.Contains(msg, "database is locked") {
			msg = "SQLITE_BUSY: " + msg
		}
		b.Logf("%d of %d buys failed; first: %s", failed.Load(), b.N, msg)
	}
}
