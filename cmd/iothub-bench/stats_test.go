package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0.1, time.Millisecond}} {
		if got := percentile(d, c.p); got != c.want {
			t.Errorf("percentile(1..100 ms, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := percentile(nil, 99); got != 0 {
		t.Errorf("percentile(nil) = %v, want 0", got)
	}
	one := []time.Duration{7}
	if percentile(one, 50) != 7 || percentile(one, 99) != 7 {
		t.Error("a single sample must be every percentile")
	}
}

func TestLatenciesSnapshotSorted(t *testing.T) {
	var l latencies
	for _, v := range []time.Duration{5, 1, 4, 2, 3} {
		l.add(v)
	}
	s := l.snapshot()
	for i, v := range s {
		if v != time.Duration(i+1) {
			t.Fatalf("snapshot = %v, want 1..5 sorted", s)
		}
	}
	l.add(0)
	if len(s) != 5 {
		t.Error("snapshot shares storage with the collector")
	}
}

func TestResultRoundTripAndTable(t *testing.T) {
	dir := t.TempDir()
	a := Result{Broker: "iothub", Scenario: "publish", Label: "qos1"}
	a.add("delivered", 12000.4444, "msg/s", true)
	a.addLatency("e2e", []time.Duration{time.Millisecond, 2 * time.Millisecond})
	a.Errors = 3
	b := Result{Broker: "mosquitto", Scenario: "publish", Label: "qos1"}
	b.add("delivered", 6000, "msg/s", true)
	b.addLatency("e2e", []time.Duration{4 * time.Millisecond})
	write := func(name string, r Result) string {
		var buf bytes.Buffer
		buf.WriteString("some log line\n")
		if err := r.write(&buf); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ra, err := readResults(write("a.jsonl", a))
	if err != nil {
		t.Fatal(err)
	}
	rb, err := readResults(write("b.jsonl", b))
	if err != nil {
		t.Fatal(err)
	}
	if len(ra) != 1 || ra[0].Figures[0].Value != 12000.444 || ra[0].Errors != 3 {
		t.Fatalf("read back %+v", ra)
	}
	var out bytes.Buffer
	table(&out, "iothub", "mosquitto", ra, rb)
	got := out.String()
	for _, want := range []string{
		"| qos1: delivered (msg/s) | 12000 | 6000 | 2.00 | iothub |",
		"| qos1: e2e p50 (ms) | 1 | 4 | 0.25 | iothub |",
		"| qos1: e2e max (ms) | 2 | 4 | 0.50 | iothub |",
		"| qos1: errors | 3 | 0 | | |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
}

func TestReadResultsRejectsBadJSON(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bad.jsonl")
	if err := os.WriteFile(p, []byte("{not json\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readResults(p); err == nil {
		t.Fatal("a broken result line was accepted")
	}
}

func TestNum(t *testing.T) {
	for v, want := range map[float64]string{12000.4: "12000", 42.25: "42.2", 0.756: "0.756", 3: "3", 1.5: "1.5"} {
		if got := num(v); got != want {
			t.Errorf("num(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestWritePasswords(t *testing.T) {
	f := &fleet{App: "apppw", Secret: []*device{{PK: "p", DK: "s000000", Secret: "x1"}, {PK: "p", DK: "s000001", Secret: "x2"}}}
	var buf bytes.Buffer
	if err := writePasswords(&buf, f); err != nil {
		t.Fatal(err)
	}
	if got, want := buf.String(), "app:apppw\ns000000:x1\ns000001:x2\n"; got != want {
		t.Fatalf("password file = %q, want %q", got, want)
	}
}

func TestPickRefusesMoreThanProvisioned(t *testing.T) {
	f := &fleet{Secret: make([]*device, 3), Cert: make([]*device, 1)}
	if d, err := f.pick("tcp", 3); err != nil || len(d) != 3 {
		t.Fatalf("pick tcp 3 = %d, %v", len(d), err)
	}
	if _, err := f.pick("mtls", 2); err == nil {
		t.Fatal("picked 2 certificate devices out of 1")
	}
}
