package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cliRun runs the CLI and returns its stdout, stderr and exit code.
func cliRun(t *testing.T, bin, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr, cmd.Stdin = &out, &errb, strings.NewReader(stdin)
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// cliHub is an `iothub serve` process and the CLI pointed at it.
type cliHub struct {
	t        *testing.T
	bin, dir string
	addrs    map[string]string
	logs     func() []string
}

// startCLIHub builds the CLI and starts `iothub serve` (with extra flags)
// on a fresh data directory; the hub stops when the test ends.
func startCLIHub(t *testing.T, extra ...string) *cliHub {
	t.Helper()
	bin, dir := buildCLI(t), t.TempDir()
	addrs, stop, logs := serveBinaryAddrs(t, bin, dir, extra...)
	t.Cleanup(stop)
	return &cliHub{t: t, bin: bin, dir: dir, addrs: addrs, logs: logs}
}

// run runs the CLI against the hub and fails the test unless it exits with want.
func (h *cliHub) run(want int, args ...string) (stdout, stderr string) {
	h.t.Helper()
	out, errOut, code := cliRun(h.t, h.bin, "", append(args, "--server", h.addrs["http"], "--data-dir", h.dir)...)
	if code != want {
		h.t.Fatalf("iothub %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, want, out, errOut)
	}
	return out, errOut
}

// TestCLITraps: the mistakes a new operator makes get a clear error and a
// distinct exit code, and change nothing.
func TestCLITraps(t *testing.T) {
	h := startCLIHub(t)
	bin, dir, addrs, run := h.bin, h.dir, h.addrs, h.run
	products := func() int {
		out, _ := run(0, "product", "list", "-o", "json")
		var l struct{ Products []json.RawMessage }
		if err := json.Unmarshal([]byte(out), &l); err != nil {
			t.Fatalf("product list -o json: %v\n%s", err, out)
		}
		return len(l.Products)
	}

	// An output format the CLI cannot print is refused before the product
	// (and its one-time secret) is created.
	before := products()
	if _, errOut := run(2, "product", "create", "--name", "lost", "-o", "yaml"); !strings.Contains(errOut, "yaml") {
		t.Fatalf("product create -o yaml: %s", errOut)
	}
	if after := products(); after != before {
		t.Fatalf("product create -o yaml created a product: %d → %d", before, after)
	}
	// Unknown subcommands, flags and flags of other commands are usage errors.
	if _, errOut := run(2, "device", "lst", "-p", "x"); !strings.Contains(errOut, `unknown command "lst"`) || !strings.Contains(errOut, "list") {
		t.Fatalf("device lst: %s", errOut)
	}
	run(2, "apikey", "lst")
	run(2, "product", "create", "--nmae", "x")
	if _, errOut, code := cliRun(t, bin, "", "serve", "--server", "http://x", "--data-dir", t.TempDir()); code != 2 || !strings.Contains(errOut, "unknown flag: --server") {
		t.Fatalf("serve --server: exit %d: %s", code, errOut)
	}
	// Not found, unauthorised, unreachable.
	run(3, "device", "get", "-p", "nosuch", "SN1")
	run(4, "product", "list", "--key", "ihk_wrong")
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + free.Addr().String()
	free.Close()
	if _, errOut, code := cliRun(t, bin, "", "product", "list", "--server", deadURL, "--data-dir", dir); code != 5 {
		t.Fatalf("unreachable hub: exit %d: %s", code, errOut)
	}
	// The API key from stdin.
	key, _ := os.ReadFile(filepath.Join(dir, "admin.key"))
	if out, errOut, code := cliRun(t, bin, string(key), "org", "list", "--key-file", "-", "--server", addrs["http"], "--data-dir", t.TempDir()); code != 0 || !strings.Contains(out, "default") {
		t.Fatalf("org list --key-file -: exit %d: %s %s", code, out, errOut)
	}
	if out, _ := run(0, "apikey", "list"); !strings.Contains(out, "true") { // the bootstrap key
		t.Fatalf("apikey list:\n%s", out)
	}

	// device list pages through everything, and says when it stops early.
	run(0, "product", "create", "--name", "fleet", "--product-key", "fleet")
	for i := range 5 {
		run(0, "device", "create", "-p", "fleet", "--device-key", fmt.Sprintf("D%d", i))
	}
	rows := func(out string) int { return strings.Count(out, "\n") - 1 }
	out, errOut := run(0, "device", "list", "-p", "fleet", "--limit", "2")
	if rows(out) != 2 || !strings.Contains(errOut, "--cursor D1") {
		t.Fatalf("device list --limit 2:\n%s\nstderr: %s", out, errOut)
	}
	if out, errOut = run(0, "device", "list", "-p", "fleet", "--limit", "2", "--cursor", "D1"); rows(out) != 2 || !strings.Contains(out, "D2") || !strings.Contains(errOut, "--cursor D3") {
		t.Fatalf("device list --cursor D1:\n%s\nstderr: %s", out, errOut)
	}
	if out, errOut = run(0, "device", "list", "-p", "fleet", "--limit", "5"); rows(out) != 5 || errOut != "" {
		t.Fatalf("device list --limit 5 (all there is) warns or misses rows:\n%s\nstderr: %s", out, errOut)
	}
	if out, errOut = run(0, "device", "list", "-p", "fleet", "--all"); rows(out) != 5 || errOut != "" {
		t.Fatalf("device list --all:\n%s\nstderr: %s", out, errOut)
	}
}

// TestCLIVersionStamp: a release build names its version.
func TestCLIVersionStamp(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "iothub")
	if out, err := exec.Command("go", "build", "-ldflags", "-X main.version=v9.8.7", "-o", bin, "../cmd/iothub").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if out, _, code := cliRun(t, bin, "", "version"); code != 0 || !strings.HasPrefix(out, "iothub v9.8.7 ") {
		t.Fatalf("version: exit %d: %q", code, out)
	}
}

// TestCLIAudit: iothub audit filters by kind, device and time, pages with
// a cursor, and --follow prints events as they happen.
func TestCLIAudit(t *testing.T) {
	h := startCLIHub(t)
	bin := h.bin
	api := []string{"--server", h.addrs["http"], "--data-dir", h.dir}
	run := func(args ...string) (string, string) {
		t.Helper()
		return h.run(0, args...)
	}
	rows := func(out string) int { return strings.Count(out, "\n") - 1 }
	run("product", "create", "--name", "audited", "--product-key", "audited")
	for i := range 3 {
		run("device", "create", "-p", "audited", "--device-key", fmt.Sprintf("A%d", i))
	}
	run("device", "disable", "-p", "audited", "A1")

	if out, _ := run("audit", "--kind", "device.disabled"); rows(out) != 1 || !strings.Contains(out, "A1") {
		t.Fatalf("audit --kind device.disabled:\n%s", out)
	}
	if out, _ := run("audit", "--device", "A1"); rows(out) != 2 || strings.Contains(out, "A0") {
		t.Fatalf("audit --device A1:\n%s", out)
	}
	first, note := run("audit", "--kind", "device.", "--limit", "3")
	i := strings.Index(note, "--cursor ")
	if rows(first) != 3 || i < 0 {
		t.Fatalf("audit --kind device. --limit 3:\n%s\nstderr: %s", first, note)
	}
	cursor := strings.Fields(note[i+len("--cursor "):])[0]
	if rest, note := run("audit", "--kind", "device.", "--cursor", cursor); rows(rest) != 1 || !strings.Contains(rest, "A0") || note != "" {
		t.Fatalf("audit --cursor %s:\n%s\nstderr: %s", cursor, rest, note)
	}
	if out, _ := run("audit", "--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)); rows(out) != 0 {
		t.Fatalf("audit --since in an hour:\n%s", out)
	}
	if _, errOut := h.run(1, "audit", "--since", "yesterday"); !strings.Contains(errOut, "RFC 3339") {
		t.Fatalf("audit --since yesterday: %s", errOut)
	}

	// --follow prints what happens next.
	follow := exec.Command(bin, append([]string{"audit", "--follow", "--kind", "device.", "-o", "json"}, api...)...)
	out, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { follow.Process.Kill(); follow.Wait() }()
	guard := time.AfterFunc(30*time.Second, func() { follow.Process.Kill() }) // a silent follow ends the reads below
	defer guard.Stop()
	lines := bufio.NewScanner(out)
	for range 4 { // the four device events so far, oldest first
		if !lines.Scan() {
			t.Fatal("audit --follow ended")
		}
	}
	run("device", "disable", "-p", "audited", "A2")
	if !lines.Scan() {
		t.Fatal("audit --follow ended")
	}
	var e struct{ Kind, DeviceKey string }
	if err := json.Unmarshal(lines.Bytes(), &e); err != nil || e.Kind != "device.disabled" || e.DeviceKey != "A2" {
		t.Fatalf("audit --follow printed %s (%v), want A2's disable", lines.Text(), err)
	}
}

// TestCLIPagesProducts: product list pages like device list (the API pages
// products, orgs and API keys by key).
func TestCLIPagesProducts(t *testing.T) {
	h := startCLIHub(t)
	for i := range 3 {
		h.run(0, "product", "create", "--name", "p", "--product-key", fmt.Sprintf("P%d", i))
	}
	out, errOut := h.run(0, "product", "list", "--limit", "2")
	if !strings.Contains(out, "P0") || !strings.Contains(out, "P1") || strings.Contains(out, "P2") || !strings.Contains(errOut, "--cursor P1") {
		t.Fatalf("product list --limit 2:\n%s\nstderr: %s", out, errOut)
	}
	out, errOut = h.run(0, "product", "list", "--cursor", "P1")
	if strings.Count(out, "\n") != 2 || !strings.Contains(out, "P2") || errOut != "" {
		t.Fatalf("product list --cursor P1:\n%s\nstderr: %s", out, errOut)
	}
}
