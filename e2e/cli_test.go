package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/iothub/iothub"
)

// buildCLI compiles cmd/iothub once per test binary.
func buildCLI(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "iothub")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/iothub").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// hubProcess is a running `iothub serve`.
type hubProcess struct {
	cmd      *exec.Cmd
	httpURL  string
	mqttAddr string
	// addrs are the addresses of the ready line: http, https (URLs), mqtt,
	// mqtts (host:port).
	addrs map[string]string
	// logs returns the lines the hub has logged so far.
	logs func() []string
}

// startBinary runs `iothub serve` on dir, with every listener on a free
// loopback port and extra flags, and waits for its ready line. The process
// is killed at the end of the test if still running.
func startBinary(t *testing.T, bin, dir string, extra ...string) *hubProcess {
	t.Helper()
	args := append([]string{"serve", "--data-dir", dir, "--mqtt", "127.0.0.1:0", "--mqtts", "127.0.0.1:0", "--http", "127.0.0.1:0", "--https", "127.0.0.1:0"}, extra...)
	cmd := exec.Command(bin, args...)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	lines := make(chan string, 100)
	var mu sync.Mutex
	var logged []string
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			logged = append(logged, sc.Text())
			mu.Unlock()
			lines <- sc.Text()
		}
		close(lines)
	}()
	p := &hubProcess{cmd: cmd, logs: func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), logged...)
	}}
	deadline := time.After(60 * time.Second)
	field := regexp.MustCompile(`"?(https?|mqtts?)"?[=:]"?([^\s",]+)`)
	for p.addrs == nil {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("iothub serve exited before its ready line")
			}
			if strings.Contains(l, "iothub ready") {
				p.addrs = map[string]string{}
				for _, m := range field.FindAllStringSubmatch(l, -1) {
					p.addrs[m[1]] = m[2]
				}
				if p.addrs["http"] == "" {
					t.Fatalf("ready line names no http address: %s", l)
				}
				p.httpURL, p.mqttAddr = p.addrs["http"], p.addrs["mqtt"]
			}
		case <-deadline:
			cmd.Process.Kill()
			t.Fatal("no ready line within 60 s")
		}
	}
	go func() {
		for range lines {
		}
	}()
	return p
}

// kill ends the process with SIGKILL: no cleanup runs.
func (p *hubProcess) kill() {
	p.cmd.Process.Kill()
	p.cmd.Wait()
}

// stop ends the process with SIGTERM and fails the test unless it exits cleanly.
func (p *hubProcess) stop(t *testing.T) {
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		t.Errorf("iothub serve did not exit cleanly on SIGTERM: %v", err)
	}
}

// serveBinary runs `iothub serve` on dir, waits for its ready line and
// returns the HTTP API URL it reports.
func serveBinary(t *testing.T, bin, dir string) (httpURL string, stop func()) {
	t.Helper()
	p := startBinary(t, bin, dir)
	return p.httpURL, func() { p.stop(t) }
}

// serveBinaryAddrs is startBinary answering the ready line's addresses, a
// stop (SIGTERM, clean exit expected) and the hub's log lines.
func serveBinaryAddrs(t *testing.T, bin, dir string, extra ...string) (addrs map[string]string, stop func(), logs func() []string) {
	t.Helper()
	p := startBinary(t, bin, dir, extra...)
	return p.addrs, func() { p.stop(t) }, p.logs
}

func TestCLIServeAndAdminCommands(t *testing.T) {
	bin := buildCLI(t)
	dir := t.TempDir()
	url, stop := serveBinary(t, bin, dir)
	cli := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append(args, "--server", url, "--data-dir", dir)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("iothub %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	var prod struct{ ProductKey, ProductSecret string }
	json.Unmarshal([]byte(cli("product", "create", "--name", "meter", "--dynamic-activation", "-o", "json")), &prod)
	if prod.ProductKey == "" || prod.ProductSecret == "" {
		t.Fatal("product create -o json gave no key and secret")
	}
	var gw iothub.Product
	json.Unmarshal([]byte(cli("product", "create", "--name", "gw", "--node-type", "gateway", "--allow-gateway-registration",
		"--sign-methods", "sha256,hmacsha256", "-o", "json")), &gw)
	if gw.NodeType != iothub.NodeGateway || !gw.AllowGatewayRegistration || len(gw.SignMethods) != 2 {
		t.Fatalf("product create --node-type gateway: %+v", gw)
	}
	table := cli("device", "create", "-p", prod.ProductKey, "--device-key", "SN42")
	if !strings.Contains(table, "DEVICEKEY") || !strings.Contains(table, "SN42") || !strings.Contains(table, "inactive") {
		t.Fatalf("device create table:\n%s", table)
	}
	if out := cli("device", "disable", "-p", prod.ProductKey, "SN42"); !strings.Contains(out, "disabled") {
		t.Fatalf("device disable:\n%s", out)
	}
	if out := cli("device", "list", "-p", prod.ProductKey, "--state", "disabled"); !strings.Contains(out, "SN42") {
		t.Fatalf("device list --state disabled:\n%s", out)
	}
	if out := cli("product", "get", prod.ProductKey, "-o", "json"); strings.Contains(out, prod.ProductSecret) {
		t.Fatal("product get shows the secret again")
	}
	// The hub's CA lifecycle: rotate, list, retire the replaced issuing CA.
	before := cli("authority", "list", "-o", "json")
	var rot struct{ ID string }
	json.Unmarshal([]byte(cli("authority", "rotate", "-o", "json")), &rot)
	var list struct {
		Authorities []struct{ ID, Kind, Status string }
	}
	json.Unmarshal([]byte(cli("authority", "list", "-o", "json")), &list)
	var trusted string
	for _, a := range list.Authorities {
		if a.Kind == "issuing" && a.Status == "trusted" {
			trusted = a.ID
		}
	}
	if rot.ID == "" || trusted == "" || !strings.Contains(before, trusted) {
		t.Fatalf("authority rotate gave %q; list: %+v", rot.ID, list)
	}
	if out := cli("authority", "retire", trusted); !strings.Contains(out, trusted) {
		t.Fatalf("authority retire:\n%s", out)
	}
	stop()

	// A second start on the same dir reuses keys and rows.
	url, stop = serveBinary(t, bin, dir)
	defer stop()
	if out := cli("device", "get", "-p", prod.ProductKey, "SN42"); !strings.Contains(out, "disabled") {
		t.Fatalf("device after restart:\n%s", out)
	}
	if fi, err := os.Stat(filepath.Join(dir, "admin.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin.key: %v %v", err, fi)
	}
}
