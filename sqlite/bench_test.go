package sqlite

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/seal"
)

// The benchmark registry is built once per process and shared by the
// benchmarks: IOTHUB_BENCH_DEVICES devices (default 100000) in product
// "bench", seeded in one transaction.
var bench struct {
	once sync.Once
	dir  string
	db   *DB
	keys []string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bench.db != nil {
		bench.db.Close()
	}
	if bench.dir != "" {
		os.RemoveAll(bench.dir)
	}
	os.Exit(code)
}

func benchDevices(b *testing.B) int {
	n := 100000
	if v := os.Getenv("IOTHUB_BENCH_DEVICES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("IOTHUB_BENCH_DEVICES=%q is not a positive number", v)
		}
	}
	return n
}

// benchDB returns the shared registry, building it on first use.
func benchDB(b *testing.B) (*DB, []string) {
	n := benchDevices(b)
	bench.once.Do(func() {
		bench.dir, bench.err = os.MkdirTemp("", "iothub-bench-")
		if bench.err != nil {
			return
		}
		key, err := seal.LoadOrCreateKey(filepath.Join(bench.dir, "data.key"))
		if err != nil {
			bench.err = err
			return
		}
		s, err := seal.New(key)
		if err != nil {
			bench.err = err
			return
		}
		if bench.db, bench.err = Open(filepath.Join(bench.dir, "bench.db"), s); bench.err != nil {
			return
		}
		if bench.err = bench.db.CreateProduct(ctx, &iothub.Product{OrgID: iothub.DefaultOrgID, ProductKey: "bench", ProductSecret: "ps"}); bench.err != nil {
			return
		}
		start := time.Now()
		bench.keys = seedDevices(b, bench.db, "bench", n)
		fmt.Fprintf(os.Stderr, "seeded %d devices in %v\n", n, time.Since(start).Round(time.Millisecond))
	})
	if bench.err != nil {
		b.Fatal(bench.err)
	}
	return bench.db, bench.keys
}

// BenchmarkDeviceLookup reads one device by (productKey, deviceKey),
// unsealing its secret, from a registry of IOTHUB_BENCH_DEVICES devices.
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

// reportCPU adds the process CPU time per op since cpu0 as "cpu-ns/op".
func reportCPU(b *testing.B, cpu0 time.Duration) {
	if cpu := cpuTime() - cpu0; cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

// BenchmarkDeviceLookupParallel is BenchmarkDeviceLookup from GOMAXPROCS
// goroutines at once, through the read pool.
func BenchmarkDeviceLookupParallel(b *testing.B) {
	db, keys := benchDB(b)
	var seed atomic.Uint64
	b.ReportAllocs()
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

// BenchmarkCreateDevice adds one device (sealing its secret, one
// transaction each) to the registry of IOTHUB_BENCH_DEVICES devices.
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

// BenchmarkAppendSamples stores one batch of 100 measurepoint posts from
// 100 random devices of the registry (history trim and latest-point upserts
// included); ns/op is per batch.
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
