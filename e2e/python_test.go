package e2e

import (
	"bufio"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/iothub/iothub"
)

// TestPythonPahoDevice runs an EnOS-style device written with Debian's
// python3-paho-mqtt, whose login signature is computed in Python: the hub
// must accept it, store its measurepoint and route a service call to it.
func TestPythonPahoDevice(t *testing.T) {
	python := "/usr/bin/python3" // Debian's paho is importable by this interpreter only
	if out, err := exec.Command(python, "-c", "import paho.mqtt.client").CombinedOutput(); err != nil {
		needTool(t, "python3-paho-mqtt is missing: "+string(out))
	}
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{"name": "py"})
	d := th.newDevice(t, p, "PY-1")
	host, port, _ := net.SplitHostPort(th.MQTTAddr())
	cmd := exec.Command(python, "testdata/enos_device.py", host, port, p.ProductKey, d.DeviceKey, d.DeviceSecret)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	expect := func(prefix string) {
		t.Helper()
		select {
		case l := <-lines:
			if !strings.HasPrefix(l, prefix) {
				t.Fatalf("python device said %q, want %q", l, prefix)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("python device did not say %q", prefix)
		}
	}
	expect("connack 0")
	th.waitState(t, p.ProductKey, d.DeviceKey, iothub.StateOnline)
	var reply iothub.Reply
	if code, err := th.admin.Send(t.Context(), "POST", "/api/v1/products/"+p.ProductKey+"/devices/PY-1/services/identify", map[string]any{"timeoutMs": 10000}, &reply); code != 200 {
		cmd.Process.Kill()
		var rest []string
		for l := range lines {
			rest = append(rest, l)
		}
		t.Fatalf("service call: %d %v; python said %v", code, err, rest)
	}
	if reply.Code != 200 || !strings.Contains(string(reply.Data), "python") {
		t.Fatalf("service reply %+v %s", reply, reply.Data)
	}
	var mp struct{ Measurepoints map[string]any }
	for deadline := time.Now().Add(5 * time.Second); mp.Measurepoints["humidity"] != 48.5; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("measurepoints %v", mp.Measurepoints)
		}
		do(t, th.admin, "GET", "/api/v1/products/"+p.ProductKey+"/devices/PY-1/measurepoints", nil, &mp, 200)
	}
	cmd.Wait()
	var rest []string
	for l := range lines {
		rest = append(rest, l)
	}
	if !strings.Contains(strings.Join(rest, "\n"), "reply 200") || rest[len(rest)-1] != "done" {
		t.Fatalf("python device output: %v", rest)
	}
}
