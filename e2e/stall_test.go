package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

// rawLogin logs a device in over a bare TCP connection with the MQTT
// version (4: 3.1.1, 5) and keepalive given, and returns the connection,
// which the caller then need never read again, and the CONNACK.
func rawLogin(t *testing.T, addr, pk, dk, secret string, version byte, keepalive uint16) (net.Conn, packets.Packet) {
	t.Helper()
	cid, user, pass, err := sign.Credentials(dk, pk, dk, secret, sign.ModeStatic, sign.SHA256, "1700000000000")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: version,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: keepalive, ClientIdentifier: cid,
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(pass)}}
	var buf bytes.Buffer
	if err := connect.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	first, err := r.ReadByte()
	if err != nil {
		t.Fatal(err)
	}
	ack := packets.Packet{ProtocolVersion: version}
	if err := ack.FixedHeader.Decode(first); err != nil || ack.FixedHeader.Type != packets.Connack {
		t.Fatalf("first packet %x: %v", first, err)
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatal(err)
	}
	if err := ack.ConnackDecode(body); err != nil || ack.ReasonCode != 0 {
		t.Fatalf("CONNACK reason %x, %v", ack.ReasonCode, err)
	}
	c.SetReadDeadline(time.Time{})
	return c, ack
}

// TestServerKeepAlive: a client asking for no keepalive, or for more
// than the hub grants, gets the hub's maximum, and an MQTT 5 client is
// told so in its CONNACK.
func TestServerKeepAlive(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{"name": "sleepy"})
	d := th.newDevice(t, p, "KA-1")
	for _, ka := range []uint16{0, 3600} {
		_, ack := rawLogin(t, th.MQTTAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, 5, ka)
		if !ack.Properties.ServerKeepAliveFlag || ack.Properties.ServerKeepAlive != 300 {
			t.Fatalf("keepalive %d: CONNACK Server Keep Alive %v %d, want 300", ka, ack.Properties.ServerKeepAliveFlag, ack.Properties.ServerKeepAlive)
		}
	}
	_, ack := rawLogin(t, th.MQTTAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, 5, 60)
	if ack.Properties.ServerKeepAliveFlag {
		t.Fatalf("keepalive 60 was replaced by %d", ack.Properties.ServerKeepAlive)
	}
}

// TestDeviceThatNeverReadsCannotHoldTheHub: a device logged in with
// keepalive 0 that never reads its socket. Service calls with large
// params fill its buffers; each still answers at its timeout (within
// 1 s), the hub disconnects the device and counts it, and the goroutines
// return to their baseline (±20) within 10 s of the callers stopping.
func TestDeviceThatNeverReadsCannotHoldTheHub(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{"name": "stuck"})
	d := th.newDevice(t, p, "DEAF-1")
	th.admin.HTTP.CloseIdleConnections()
	time.Sleep(100 * time.Millisecond)
	base := runtime.NumGoroutine()
	rawLogin(t, th.MQTTAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, 4, 0)
	th.waitState(t, p.ProductKey, d.DeviceKey, iothub.StateOnline)

	const timeout = 2 * time.Second
	body, _ := json.Marshal(map[string]any{"params": map[string]any{"blob": strings.Repeat("x", 400<<10)}, "timeoutMs": timeout.Milliseconds()})
	path := "/api/v1/products/" + p.ProductKey + "/devices/" + d.DeviceKey + "/services/dump"
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	var slowest time.Duration
	for range 12 {
		wg.Go(func() {
			for range 3 {
				// From the request fully sent to the answer's first byte:
				// the hub's time, not the callers' uploads on a busy machine.
				var sent, answered time.Time
				ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
					WroteRequest:         func(httptrace.WroteRequestInfo) { sent = time.Now() },
					GotFirstResponseByte: func() { answered = time.Now() },
				})
				status, _ := th.admin.Send(ctx, "POST", path, json.RawMessage(body), nil)
				took := answered.Sub(sent)
				mu.Lock()
				statuses[status]++
				slowest = max(slowest, took)
				mu.Unlock()
				if took > timeout+time.Second {
					t.Errorf("a call with timeoutMs %d answered %d after %v", timeout.Milliseconds(), status, took)
				}
			}
		})
	}
	wg.Wait()
	stopped := time.Now()
	// The callers' idle keep-alive connections are theirs, not the device's.
	th.admin.HTTP.CloseIdleConnections()
	t.Logf("call statuses: %v; slowest answer after %v", statuses, slowest.Round(time.Millisecond))
	for status := range statuses {
		if status != 504 && status != 409 {
			t.Fatalf("a call answered %d; want 504 (no answer) or 409 (the hub dropped the device)", status)
		}
	}

	eventually(t, 10*time.Second, "goroutines back to the baseline", func() bool {
		return runtime.NumGoroutine() <= base+20
	})
	t.Logf("goroutines: %d at the baseline, %d %v after the callers stopped", base, runtime.NumGoroutine(), time.Since(stopped).Round(time.Millisecond))
	th.waitState(t, p.ProductKey, d.DeviceKey, iothub.StateOffline)
	res, err := http.Get(th.HTTPURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	metrics, _ := io.ReadAll(res.Body)
	if !strings.Contains(string(metrics), `iothub_mqtt_sessions_closed_total{reason="write_stalled"} 1`) {
		t.Fatal("the stalled device's disconnection is not counted in iothub_mqtt_sessions_closed_total{reason=\"write_stalled\"}")
	}
}
