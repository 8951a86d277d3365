package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iothub/iothub/sign"
)

// answerAfter makes a device answer every downstream request after delay.
func answerAfter(o *paho.ClientOptions, delay time.Duration) {
	o.SetDefaultPublishHandler(func(c paho.Client, m paho.Message) {
		var req struct{ ID json.RawMessage }
		json.Unmarshal(m.Payload(), &req)
		time.Sleep(delay)
		reply, _ := json.Marshal(map[string]any{"id": req.ID, "code": 200, "data": map[string]any{}, "message": ""})
		c.Publish(m.Topic()+"_reply", 1, false, reply)
	})
}

// TestGracefulStop sends SIGTERM to `iothub serve` while a service call
// waits for a device: the call is answered, a login meanwhile is refused,
// an MQTT 5 device gets DISCONNECT 0x8B (server shutting down), and the
// process exits cleanly. A second signal stops a hub that is waiting for
// calls at once.
func TestGracefulStop(t *testing.T) {
	bin := buildCLI(t)
	dir := t.TempDir()
	p := startBinary(t, bin, dir)
	th := binaryHub(t, p, dir)
	prod := th.newProduct(t, map[string]any{"name": "slow"})
	slow := th.newDevice(t, prod, "SLOW")
	o := deviceOptions("tcp://"+p.mqttAddr, prod.ProductKey, slow.DeviceKey, slow.DeviceSecret, sign.ModeStatic)
	answerAfter(o, 1500*time.Millisecond)
	connect(t, o)
	v5 := th.newDevice(t, prod, "V5")
	conn, _ := rawLogin(t, p.mqttAddr, prod.ProductKey, v5.DeviceKey, v5.DeviceSecret, 5, 60)
	late := th.newDevice(t, prod, "LATE")

	status := make(chan int, 1)
	go func() {
		s, _ := th.admin.Send(context.Background(), "POST", "/api/v1/products/"+prod.ProductKey+"/devices/"+slow.DeviceKey+"/services/restart",
			map[string]any{"timeoutMs": 10000}, nil)
		status <- s
	}()
	time.Sleep(300 * time.Millisecond) // the call is with the device
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(100 * time.Millisecond)
	if err := refused(deviceOptions("tcp://"+p.mqttAddr, prod.ProductKey, late.DeviceKey, late.DeviceSecret, sign.ModeStatic)); err == nil {
		t.Fatal("a stopping hub let a device log in")
	}
	if s := <-status; s != 200 {
		t.Fatalf("the call under way at SIGTERM answered %d, want 200 (the device's reply)", s)
	}

	// The MQTT 5 device is told why its session ends.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	first, err := r.ReadByte()
	if err != nil {
		t.Fatalf("no DISCONNECT for the MQTT 5 device: %v", err)
	}
	if first>>4 != packets.Disconnect {
		t.Fatalf("first packet after SIGTERM has type %d, want DISCONNECT", first>>4)
	}
	r.ReadByte() // remaining length
	if code, err := r.ReadByte(); err != nil || code != packets.ErrServerShuttingDown.Code {
		t.Fatalf("DISCONNECT reason %#x (%v), want %#x", code, err, packets.ErrServerShuttingDown.Code)
	}
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("iothub serve did not exit cleanly: %v", err)
	}
	t.Logf("stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))

	// Restarted, with a device that never answers: the call under way
	// is answered unavailable once the drain time is over.
	p = startBinary(t, bin, dir)
	th = binaryHub(t, p, dir)
	mute := th.newDevice(t, prod, "MUTE")
	callMute := func(th *testHub, p *hubProcess) chan int {
		connect(t, deviceOptions("tcp://"+p.mqttAddr, prod.ProductKey, mute.DeviceKey, mute.DeviceSecret, sign.ModeStatic))
		status := make(chan int, 1)
		go func() {
			s, _ := th.admin.Send(context.Background(), "POST", "/api/v1/products/"+prod.ProductKey+"/devices/"+mute.DeviceKey+"/services/restart",
				map[string]any{"timeoutMs": 30000}, nil)
			status <- s
		}()
		time.Sleep(300 * time.Millisecond)
		return status
	}
	status = callMute(th, p)
	start = time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if s := <-status; s != 503 {
		t.Fatalf("an unanswered call at SIGTERM answered %d, want 503", s)
	}
	t.Logf("the unanswered call got 503 %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("iothub serve did not exit cleanly: %v", err)
	}

	// A second signal ends the wait at once.
	p = startBinary(t, bin, dir)
	th = binaryHub(t, p, dir)
	callMute(th, p)
	p.cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(300 * time.Millisecond)
	start = time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("after a second signal the hub exited with %v, want a failure status", err)
		}
		t.Logf("second signal: exited %v later", time.Since(start).Round(time.Millisecond))
	case <-time.After(2 * time.Second):
		t.Fatal("a second signal did not stop the hub at once")
	}
}
