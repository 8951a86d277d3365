package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
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
}

// startBinary runs `iothub serve` on dir and waits for its ready line.
// The process is killed at the end of the test if still running.
func startBinary(t *testing.T, bin, dir string) *hubProcess {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--data", dir, "--mqtt", "127.0.0.1:0", "--mqtts", "127.0.0.1:0", "--http", "127.0.0.1:0", "--https", "127.0.0.1:0")
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
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	p := &hubProcess{cmd: cmd}
	deadline := time.After(60 * time.Second)
	httpRE := regexp.MustCompile(`http=(http://[0-9.:]+)`)
	mqttRE := regexp.MustCompile(`mqtt=([0-9.:]+)`)
	for p.httpURL == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("iothub serve exited before its ready line")
			}
			if strings.Contains(l, "ready") {
				m := httpRE.FindStringSubmatch(l)
				if m == nil {
					t.Fatalf("ready line names no http address: %s", l)
				}
				p.httpURL = m[1]
				if m := mqttRE.FindStringSubmatch(l); m != nil {
					p.mqttAddr = m[1]
				}
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

// serveBinary runs `iothub serve` on dir, waits for its ready line and
// returns the HTTP API URL it reports.
func serveBinary(t *testing.T, bin, dir string) (httpURL string, stop func()) {
	t.Helper()
	p := startBinary(t, bin, dir)
	return p.httpURL, func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		if err := p.cmd.Wait(); err != nil {
			t.Errorf("iothub serve did not exit cleanly on SIGTERM: %v", err)
		}
	}
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
