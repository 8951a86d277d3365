package edge

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStatePermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := OpenState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m := fileMode(t, dir); m != 0o700 {
		t.Fatalf("state dir mode %v, want 0700", m)
	}
	if err := s.Write(FileDeviceSecret, "s3cret"); err != nil {
		t.Fatal(err)
	}
	if m := fileMode(t, filepath.Join(dir, FileDeviceSecret)); m != 0o600 {
		t.Fatalf("secret mode %v, want 0600", m)
	}
	if v, _ := s.Read(FileDeviceSecret); v != "s3cret" {
		t.Fatalf("read %q", v)
	}
	if v, err := s.Read(FileCert); v != "" || err != nil {
		t.Fatalf("absent file: %q %v", v, err)
	}
	for _, n := range []string{FileCert, FileCAChain, FileSerial, FileBuffer} {
		if err := s.Write(n, "x"); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Wipe(); err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(left) != 0 {
		t.Fatalf("left after Wipe: %v", left)
	}
	if _, err := OpenState(""); err == nil {
		t.Fatal("empty state dir accepted")
	}
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o600)
	if _, err := OpenState(f); err == nil {
		t.Fatal("a file accepted as state dir")
	}
}

func TestBuffer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buf.jsonl")
	b := &Buffer{Path: path, MaxBytes: 2000}
	for i := 0; i < 5; i++ {
		if err := b.Append(Record{Measurepoints: map[string]any{"i": i}, Time: int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if m := fileMode(t, path); m != 0o600 {
		t.Fatalf("buffer mode %v", m)
	}
	if b.Len() != 5 {
		t.Fatalf("Len = %d", b.Len())
	}
	// A send that fails on the third record keeps it and the rest, in order.
	var got []int64
	n, err := b.Drain(func(r Record) error {
		if r.Time == 2 {
			return errors.New("offline")
		}
		got = append(got, r.Time)
		return nil
	})
	if n != 2 || err == nil || fmt.Sprint(got) != "[0 1]" {
		t.Fatalf("Drain = %d %v %v", n, err, got)
	}
	got = nil
	n, err = b.Drain(func(r Record) error { got = append(got, r.Time); return nil })
	if n != 3 || err != nil || fmt.Sprint(got) != "[2 3 4]" {
		t.Fatalf("second Drain = %d %v %v", n, err, got)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("drained buffer file still exists")
	}

	// The bound holds and keeps the newest records.
	for i := 0; i < 200; i++ {
		if err := b.Append(Record{Measurepoints: map[string]any{"v": strings.Repeat("x", 20)}, Time: int64(i)}); err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(path); fi.Size() > 2000 {
			t.Fatalf("buffer grew to %d bytes", fi.Size())
		}
	}
	if b.Dropped() == 0 {
		t.Fatal("nothing dropped although the bound was passed")
	}
	var last int64 = -1
	b.Drain(func(r Record) error { last = r.Time; return nil })
	if last != 199 {
		t.Fatalf("newest record lost: last = %d", last)
	}

	// A torn last line is skipped, not fatal.
	b.Append(Record{Measurepoints: map[string]any{"a": 1}, Time: 7})
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"measurepoints":{"a":`)
	f.Close()
	if b.Len() != 1 {
		t.Fatalf("Len with torn line = %d", b.Len())
	}
	if err := b.Append(Record{Measurepoints: map[string]any{"big": strings.Repeat("y", 3000)}}); err == nil {
		t.Fatal("record larger than the bound accepted")
	}
}

func selfSigned(t *testing.T, notBefore time.Time) []byte {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: notBefore, NotAfter: notBefore.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
	}, &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"}}, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestClockGuard(t *testing.T) {
	now := time.Now()
	old := BuildDate
	t.Cleanup(func() { BuildDate = old })
	BuildDate = "2020-01-01"

	if err := CheckClock(now, selfSigned(t, now.Add(-time.Hour))); err != nil {
		t.Fatalf("good clock refused: %v", err)
	}
	err := CheckClock(now, selfSigned(t, now.Add(time.Hour)))
	if !errors.Is(err, ErrClock) || !strings.Contains(err.Error(), "test root") {
		t.Fatalf("clock before CA NotBefore: %v", err)
	}
	BuildDate = now.Add(24 * time.Hour).UTC().Format("2006-01-02")
	err = CheckClock(now, nil)
	if !errors.Is(err, ErrClock) || !strings.Contains(err.Error(), "build date") {
		t.Fatalf("clock before build date: %v", err)
	}
	BuildDate = "2020-01-01"
	if err := CheckClock(now, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")); err == nil {
		t.Fatal("garbage CA accepted")
	}
}

func TestBackoff(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: 2 * time.Second}
	prevCap := time.Duration(0)
	for i := 0; i < 12; i++ {
		d := b.Next()
		capd := 100 * time.Millisecond << i
		if capd > 2*time.Second {
			capd = 2 * time.Second
		}
		if d < capd/2 || d > capd {
			t.Fatalf("attempt %d: %v not in [%v, %v]", i, d, capd/2, capd)
		}
		if capd < prevCap {
			t.Fatal("cap shrank")
		}
		prevCap = capd
	}
	b.Reset()
	if d := b.Next(); d > 100*time.Millisecond {
		t.Fatalf("after Reset: %v", d)
	}
	// Jitter: many draws at the cap are not all equal.
	seen := map[time.Duration]bool{}
	for i := 0; i < 20; i++ {
		b := Backoff{Min: time.Second, Max: time.Second}
		seen[b.Next()] = true
	}
	if len(seen) < 2 {
		t.Fatal("no jitter")
	}
}

func TestConfigCheck(t *testing.T) {
	good := Config{StateDir: "/tmp/x", CAFile: "ca.pem", Broker: "ssl://127.0.0.1:18883", API: "https://127.0.0.1:8443", ProductKey: "pk", DeviceKey: "sn1"}
	c, err := good.check()
	if err != nil {
		t.Fatal(err)
	}
	if c.Auth != AuthCertificate || c.KeyType != RSA2048 || c.Interval != 5*time.Second {
		t.Fatalf("defaults: %+v", c)
	}
	bad := []func(*Config){
		func(c *Config) { c.StateDir = "" },
		func(c *Config) { c.Broker = "http://x:1" },
		func(c *Config) { c.Broker = "ssl://host" },
		func(c *Config) { c.DeviceKey = "a/b" },
		func(c *Config) { c.KeyType = "rsa1024" },
		func(c *Config) { c.Auth = "certificate"; c.Broker = "tcp://127.0.0.1:1" },
		func(c *Config) { c.API = "http://127.0.0.1:8080" },
		func(c *Config) { c.CAFile = ""; c.Auth = AuthSecret },
		func(c *Config) { c.Interval = time.Millisecond },
	}
	for i, mod := range bad {
		c := good
		mod(&c)
		if _, err := c.check(); err == nil {
			t.Errorf("bad config %d accepted: %+v", i, c)
		}
	}
	if _, err := New(Config{StateDir: t.TempDir(), Broker: "tcp://127.0.0.1:1", ProductKey: "pk", DeviceKey: "d", CAFile: filepath.Join(t.TempDir(), "missing.pem")}); err == nil {
		t.Fatal("missing CA file accepted")
	}
}

func TestSystemMetrics(t *testing.T) {
	m, err := SystemMetrics()
	if err != nil {
		t.Skip("no /proc:", err)
	}
	for _, k := range []string{"load1", "memTotal", "uptime"} {
		if _, ok := m[k]; !ok {
			t.Errorf("metric %s missing: %v", k, m)
		}
	}
}

func TestRefusedClassification(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{&refusal{code: 5, err: errors.New("not Authorized")}, true},
		{fmt.Errorf("network Error : %w", errors.New("remote error: tls: bad certificate")), true},
		{errors.New("remote error: tls: certificate revoked"), true},
		{errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), false},
		{errors.New("EOF"), false},
		{nil, false},
	}
	for _, c := range cases {
		if got := refused(c.err); got != c.want {
			t.Errorf("refused(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestBrokerURL(t *testing.T) {
	for in, want := range map[string]string{"ssl://h:1": "ssl://h:1", "mqtts://h:1": "ssl://h:1", "tcp://h:2": "tcp://h:2"} {
		if got, _, err := brokerURL(in); err != nil || got != want {
			t.Errorf("brokerURL(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"h:1", "ws://h:1", "ssl://h", ""} {
		if _, _, err := brokerURL(bad); err == nil {
			t.Errorf("brokerURL(%q) accepted", bad)
		}
	}
}

func TestMeasurepointGet(t *testing.T) {
	a := &Agent{last: map[string]any{"temp": 21.5, "rpm": 900.0}}
	got, err := a.onGet(json.RawMessage(`["temp","missing"]`))
	if err != nil || fmt.Sprint(got) != "map[temp:21.5]" {
		t.Fatalf("get [temp missing] = %v, %v", got, err)
	}
	got, err = a.onGet(nil)
	if err != nil || len(got.(map[string]any)) != 2 {
		t.Fatalf("get all = %v, %v", got, err)
	}
	var se *ServiceError
	if _, err := a.onGet(json.RawMessage(`{"temp":1}`)); !errors.As(err, &se) || se.Code != 1220 {
		t.Fatalf("bad params: %v", err)
	}
}
