package postgres

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/internal/sqlstore"
	"github.com/iothub/iothub/postgres/pgtest"
	"github.com/iothub/iothub/seal"
)

// The benchmark registry is built once per process on a durable cluster of
// its own (fsync and synchronous_commit on, unlike the test cluster):
// IOTHUB_BENCH_DEVICES devices (default 100000) in product "bench".
var bench struct {
	once    sync.Once
	cluster *pgtest.Cluster
	db      *DB
	keys    []string
	err     error
}

func benchDB(b *testing.B) (*DB, []string) {
	n := 100000
	if v := os.Getenv("IOTHUB_BENCH_DEVICES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("IOTHUB_BENCH_DEVICES=%q is not a positive number", v)
		}
	}
	bench.once.Do(func() {
		if bench.cluster, bench.err = pgtest.Start(pgtest.Options{Durable: true}); bench.err != nil {
			return
		}
		var url string
		if url, bench.err = bench.cluster.CreateDatabase(); bench.err != nil {
			return
		}
		var s *seal.Sealer
		if s, bench.err = seal.New(make([]byte, 32)); bench.err != nil {
			return
		}
		if bench.db, bench.err = Open(url, s); bench.err != nil {
			return
		}
		if bench.err = bench.db.CreateProduct(ctx, &iothub.Product{OrgID: iothub.DefaultOrgID, ProductKey: "bench", ProductSecret: "ps"}); bench.err != nil {
			return
		}
		start := time.Now()
		bench.keys, bench.err = seed(bench.db, "bench", n)
		fmt.Fprintf(os.Stderr, "seeded %d devices in %v\n", n, time.Since(start).Round(time.Millisecond))
		if bench.err == nil {
			_, bench.err = bench.db.db.Exec(`VACUUM ANALYZE devices`)
		}
	})
	if bench.err != nil {
		if bench.cluster == nil && os.Getenv("CI") == "" {
			b.Skip(bench.err)
		}
		b.Fatal(bench.err)
	}
	return bench.db, bench.keys
}

// stopBench stops the benchmark cluster, which pgtest.Run does not know.
func stopBench() {
	if bench.db != nil {
		bench.db.Close()
	}
	if bench.cluster != nil {
		bench.cluster.Stop()
	}
}

// seed inserts n devices with sealed secrets, 10 000 per statement.
func seed(db *DB, pk string, n int) ([]string, error) {
	keys := make([]string, n)
	now := sqlstore.MS(time.Now())
	for lo := 0; lo < n; lo += 10000 {
		hi := min(lo+10000, n)
		dks, assets, secrets := make([]string, 0, hi-lo), make([]string, 0, hi-lo), make([]string, 0, hi-lo)
		for i := lo; i < hi; i++ {
			keys[i] = fmt.Sprintf("d%07d", i)
			sealed, err := db.sealer.Seal(fmt.Sprintf("secret-%s-%d", pk, i), sqlstore.DeviceAAD(pk, keys[i]))
			if err != nil {
				return nil, err
			}
			dks, assets, secrets = append(dks, keys[i]), append(assets, pk+"-"+keys[i]), append(secrets, sealed)
		}
		_, err := db.db.Exec(`INSERT INTO devices (`+sqlstore.DeviceCols+`)
			SELECT $1, $2, dk, asset, '', 'inactive', secret, 1, NULL, NULL, $3
			FROM unnest($4::text[], $5::text[], $6::text[]) AS v (dk, asset, secret)`,
			iothub.DefaultOrgID, pk, now, dks, assets, secrets)
		if err != nil {
			return nil, err
		}
	}
	return keys, nil
}

// cpuTime is the CPU time this process (the client side only: the server's
// work is not in it) has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, cpu0 time.Duration) {
	if cpu := cpuTime() - cpu0; cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "client-cpu-ns/op")
	}
}

// BenchmarkDeviceLookup reads one device by (productKey, deviceKey),
// unsealing its secret: one round trip to the server on 127.0.0.1.
func BenchmarkDeviceLookup(b *testing.B) {
	db, keys := benchDB(b)
	r := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	cpu0 := cpuTime()
	for b.Loop() {
		d, err := db.Device(ctx, "bench", keys[r.IntN(len(keys))])
		if err != nil || d.DeviceSecret == "" {
			b.Fatal(d, err)
		}
	}
	reportCPU(b, cpu0)
}

// BenchmarkDeviceLookupParallel is BenchmarkDeviceLookup from 8 goroutines
// per GOMAXPROCS through the connection pool.
func BenchmarkDeviceLookupParallel(b *testing.B) {
	db, keys := benchDB(b)
	var seed atomic.Uint64
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	cpu0 := cpuTime()
	defer reportCPU(b, cpu0)
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(seed.Add(1), 7))
		for pb.Next() {
			d, err := db.Device(ctx, "bench", keys[r.IntN(len(keys))])
			if err != nil || d.DeviceSecret == "" {
				b.Error(d, err)
				return
			}
		}
	})
}

// BenchmarkCreateDevice adds one device (one transaction, committed to disk).
func BenchmarkCreateDevice(b *testing.B) {
	db, _ := benchDB(b)
	run := time.Now().UnixNano()
	i := 0
	b.ReportAllocs()
	cpu0 := cpuTime()
	for b.Loop() {
		i++
		d := &iothub.Device{ProductKey: "bench", DeviceKey: fmt.Sprintf("c%x-%d", run, i), DeviceSecret: "new-device-secret-0123456789abcd"}
		if err := db.CreateDevice(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu0)
}

// BenchmarkAppendSamples stores one batch of 100 posts from 100 random
// devices (five statements, one transaction); ns/op is per batch.
func BenchmarkAppendSamples(b *testing.B) {
	db, keys := benchDB(b)
	r := rand.New(rand.NewPCG(3, 4))
	batch := make([]iothub.Sample, 100)
	b.ReportAllocs()
	cpu0 := cpuTime()
	for b.Loop() {
		now := time.Now()
		for i := range batch {
			batch[i] = iothub.Sample{ProductKey: "bench", DeviceKey: keys[r.IntN(len(keys))], Time: now,
				Measurepoints: []byte(`{"temp":21.5,"power":{"value":1,"quality":9}}`)}
		}
		if err := db.AppendSamples(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu0)
}
