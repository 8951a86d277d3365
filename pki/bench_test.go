package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/iothub/iothub"
)

// benchmarkEnroll measures Enroll end to end (CSR parse and signature
// check, binding and cap lookups, signing, the SQLite insert) with CSRs
// made before the timer starts. Each of len(keys) devices enrolls its own
// key round after round; the service clock moves two days per round and
// certificates last one day, so no device reaches the valid-certificate cap.
func benchmarkEnroll(b *testing.B, keys []crypto.Signer) {
	e := newEnv(b)
	csrs := make([]string, len(keys))
	devs := make([]*iothub.Device, len(keys))
	for i, k := range keys {
		csrs[i] = goCSR(b, k)
		devs[i] = e.device(b, e.p, fmt.Sprintf("bench%d", i))
	}
	var offset atomic.Int64
	base := time.Now()
	e.svc.now = func() time.Time { return base.Add(time.Duration(offset.Load())) }
	i := 0
	cpu0 := cpuTime(b)
	for b.Loop() {
		j := i % len(keys)
		if j == 0 && i > 0 {
			offset.Add(int64(48 * time.Hour))
		}
		if _, err := e.svc.Enroll(ctx, e.p, devs[j], csrs[j], 1); err != nil {
			b.Fatal(err)
		}
		i++
	}
	reportRate(b, cpu0, "certs")
}

// cpuTime is the process's user+system CPU time.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportRate adds the wall-clock rate and the process CPU time per
// operation since cpu0: on a shared machine the CPU figure is the steadier.
func reportRate(b *testing.B, cpu0 time.Duration, unit string) {
	cpu := cpuTime(b) - cpu0
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), unit+"/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}

func BenchmarkEnrollRSA2048(b *testing.B) {
	keys := make([]crypto.Signer, 32)
	for i := range keys {
		keys[i] = rsaKey(b, i)
	}
	benchmarkEnroll(b, keys)
}

func BenchmarkEnrollP256(b *testing.B) {
	keys := make([]crypto.Signer, 32)
	for i := range keys {
		keys[i] = p256Key(b)
	}
	benchmarkEnroll(b, keys)
}

// BenchmarkIssue is the CA's share of an enrollment: signing alone.
func BenchmarkIssue(b *testing.B) {
	for _, tc := range []struct {
		name string
		key  func() crypto.Signer
	}{
		{"rsa2048", func() crypto.Signer { return rsaKey(b, 0) }},
		{"p256", func() crypto.Signer { return p256Key(b) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			csr, err := ParseCSR(goCSR(b, tc.key()))
			if err != nil {
				b.Fatal(err)
			}
			now := time.Now()
			cpu0 := cpuTime(b)
			for b.Loop() {
				if _, err := shared.issueDevice(csr, "prod", "dev", now, now.Add(time.Hour)); err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, cpu0, "certs")
		})
	}
}

// BenchmarkIsRevoked: the in-memory lookup on the TLS path, half hits and
// half misses, against 10,000 revoked certificates, from all cores.
func BenchmarkIsRevoked(b *testing.B) {
	e := newEnv(b)
	const n = 10000
	serials := make([]string, 2*n)
	revoked := make([]*iothub.Certificate, n)
	at := time.Now()
	for i := range serials {
		s, err := rand.Int(rand.Reader, maxSerial)
		if err != nil {
			b.Fatal(err)
		}
		serials[i] = s.Text(16)
		if i < n {
			revoked[i] = &iothub.Certificate{Serial: serials[i], RevokedAt: &at, Reason: "keyCompromise", NotAfter: at.Add(time.Hour)}
		}
	}
	e.svc.remember(revoked...)
	var hits atomic.Int64
	cpu0 := cpuTime(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i, h := 0, int64(0)
		for pb.Next() {
			if e.svc.IsRevoked(serials[i%len(serials)]) {
				h++
			}
			i += 7919 // a prime stride: hits and misses interleave
		}
		hits.Add(h)
	})
	b.StopTimer()
	if hits.Load() == 0 {
		b.Fatal("no lookup hit")
	}
	reportRate(b, cpu0, "lookups")
}

// BenchmarkAuthorizeClient: the whole decision for a hub-issued P-256
// client certificate (chain verification, revocation, name).
func BenchmarkAuthorizeClient(b *testing.B) {
	e := newEnv(b)
	c, err := e.svc.Enroll(ctx, e.p, e.device(b, e.p, "dev1"), goCSR(b, p256Key(b)), 0)
	if err != nil {
		b.Fatal(err)
	}
	peer := []*x509.Certificate{parsePEMCert(b, c.CertPEM)}
	now := time.Now()
	cpu0 := cpuTime(b)
	for b.Loop() {
		if _, err := e.svc.AuthorizeClient(e.p, "dev1", peer, now); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b, cpu0, "logins")
}
