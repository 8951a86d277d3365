package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestServePprofRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "10.1.2.3:0", "example.com:0", "127.0.0.1"} {
		srv, _, err := servePprof(addr)
		if err == nil {
			srv.Close()
			t.Errorf("servePprof(%q): served, want an error", addr)
		}
	}
}

func TestServePprofServesHeapOnLoopback(t *testing.T) {
	srv, addr, err := servePprof("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	// idle-profile.sh reads these lines.
	heap := get(t, "http://"+addr.String()+"/debug/pprof/heap?gc=1&debug=1")
	for _, want := range []string{"\n# HeapAlloc = ", "\n# HeapInuse = ", "\n# Stack = "} {
		if !strings.Contains(heap, want) {
			t.Errorf("GET heap?debug=1: no %q line", want)
		}
	}
	if g := get(t, "http://"+addr.String()+"/debug/pprof/goroutine?debug=1"); !strings.HasPrefix(g, "goroutine profile: total ") {
		t.Errorf("GET goroutine?debug=1 begins %.40q", g)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	return string(body)
}

func TestCountName(t *testing.T) {
	for n, want := range map[int]string{1_000_000: "1M", 3_000_000: "3M", 19_000: "19000", 1_500_000: "1500000"} {
		if got := countName(n); got != want {
			t.Errorf("countName(%d) = %q, want %q", n, got, want)
		}
	}
}
