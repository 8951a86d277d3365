package mqtt

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

// mosquitto runs a Debian mosquitto client and returns its output and error.
func mosquitto(t *testing.T, tool string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, tool, args...).CombinedOutput()
	return string(out), err
}

// mosquittoStdin runs a tool with an empty stdin.
func mosquittoStdin(t *testing.T, tool string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func needMosquitto(t *testing.T) {
	for _, b := range []string{"mosquitto_pub", "mosquitto_sub"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skip(b + " not installed (Debian package mosquitto-clients)")
		}
	}
}

func hostPort(addr string) []string {
	i := strings.LastIndexByte(addr, ':')
	return []string{"-h", addr[:i], "-p", addr[i+1:], "-V", "mqttv311"}
}

func loginArgs(t *testing.T, pk, dk, secret string, mode int) []string {
	cid, user, pass := creds(t, pk, dk, secret, mode, sign.SHA256)
	return []string{"-i", cid, "-u", user, "-P", pass}
}

func TestInteropMosquittoSecret(t *testing.T) {
	needMosquitto(t)
	h := newTestHub(t)
	p := h.product("pkmq", nil)
	d := h.device(p, "dev")
	base := append(hostPort(h.addr), loginArgs(t, "pkmq", "dev", d.DeviceSecret, 2)...)

	// mosquitto_pub posts a measurepoint; it is stored.
	out, err := mosquitto(t, "mosquitto_pub", append(base, "-q", "1", "-t", "/sys/pkmq/dev/thing/measurepoint/post",
		"-m", `{"id":"1","version":"1.0","method":"thing.measurepoint.post","params":{"measurepoints":{"rpm":1450}}}`)...)
	if err != nil {
		t.Fatalf("mosquitto_pub: %v %s", err, out)
	}
	eventually(t, "measurepoint from mosquitto_pub", func() bool {
		pts, _ := h.db.LatestPoints(context.Background(), "pkmq", "dev")
		return len(pts) == 1 && pts[0].Name == "rpm" && string(pts[0].Value) == "1450"
	})

	// A wrong secret is refused.
	bad := append(hostPort(h.addr), loginArgs(t, "pkmq", "dev", "wrong", 2)...)
	if out, err := mosquitto(t, "mosquitto_pub", append(bad, "-t", "/sys/pkmq/dev/x", "-m", "x")...); err == nil {
		t.Fatalf("mosquitto_pub with a wrong secret succeeded: %s", out)
	}

	// A service call reaches mosquitto_sub, which subscribed to its own topics only.
	type res struct {
		out string
		err error
	}
	done := make(chan res, 1)
	go func() {
		out, err := mosquitto(t, "mosquitto_sub", append(base, "-t", "/sys/pkmq/dev/thing/service/#", "-C", "1", "-W", "10", "-v")...)
		done <- res{out, err}
	}()
	eventually(t, "mosquitto_sub online", func() bool { return h.srv.Online("pkmq", "dev") })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := h.srv.Call(ctx, "pkmq", "dev", "thing/service/setSpeed", "thing.service.setSpeed", json.RawMessage(`{"rpm":900}`)); iothub.ErrorCode(err) != iothub.ETIMEOUT {
		t.Fatalf("call to a device that does not answer: %v", err)
	}
	r := <-done
	if r.err != nil || !strings.Contains(r.out, "/sys/pkmq/dev/thing/service/setSpeed") || !strings.Contains(r.out, `"method":"thing.service.setSpeed"`) {
		t.Fatalf("mosquitto_sub got %q (%v)", r.out, r.err)
	}
}

func TestInteropMosquittoActivation(t *testing.T) {
	needMosquitto(t)
	h := newTestHub(t)
	p := h.product("pkmqa", func(p *iothub.Product) { p.DynamicActivation = true; p.AutoRegister = true })
	h.device(p, "SN-1")
	sub := func(dk string) (string, error) {
		return mosquitto(t, "mosquitto_sub", append(append(hostPort(h.addr), loginArgs(t, "pkmqa", dk, p.ProductSecret, 3)...),
			"-t", "/ext/session/pkmqa/"+dk+"/#", "-C", "1", "-W", "10")...)
	}
	for _, dk := range []string{"SN-1", "SN-AUTO"} {
		out, err := sub(dk)
		if err != nil {
			t.Fatalf("activation of %s: %v %s", dk, err, out)
		}
		var msg activateMsg
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &msg); err != nil {
			t.Fatalf("activation output %q: %v", out, err)
		}
		reg := h.stored("pkmqa", dk)
		if msg.Params.DeviceSecret != reg.DeviceSecret {
			t.Fatalf("%s: pushed secret differs from the registry", dk)
		}
		// Mode 2 with it works; then mode 3 is refused.
		out, err = mosquitto(t, "mosquitto_pub", append(append(hostPort(h.addr), loginArgs(t, "pkmqa", dk, msg.Params.DeviceSecret, 2)...),
			"-t", "/sys/pkmqa/"+dk+"/thing/measurepoint/post", "-m", `{"id":"1","method":"thing.measurepoint.post","params":{"measurepoints":{"a":1}}}`)...)
		if err != nil {
			t.Fatalf("mode 2 with the activated secret: %v %s", err, out)
		}
		if out, err := sub(dk); err == nil {
			t.Fatalf("second activation of %s accepted: %s", dk, out)
		}
	}
}

func TestInteropMosquittoCertificate(t *testing.T) {
	needMosquitto(t)
	h := newTestHub(t, withPKI)
	p, d1, d2 := certProduct(h)
	c1 := h.enroll(p, d1)
	c2 := h.enroll(p, d2)
	dir := t.TempDir()
	ca := writeFile(t, dir, "ca.pem", h.certs.ChainPEM())
	files := func(c devCert, name string) []string {
		return []string{"--cafile", ca, "--cert", writeFile(t, dir, name+".pem", c.certPEM), "--key", writeFile(t, dir, name+".key", c.keyPEM)}
	}
	login := loginArgs(t, "pkcert", "dev1", d1.DeviceSecret, 2)
	pub := func(extra ...string) (string, error) {
		args := append(append(hostPort(h.tlsAddr), login...), extra...)
		return mosquitto(t, "mosquitto_pub", append(args, "-t", "/sys/pkcert/dev1/thing/measurepoint/post",
			"-m", `{"id":"1","method":"thing.measurepoint.post","params":{"measurepoints":{"v":1}}}`)...)
	}
	if out, err := pub(files(c1, "own")...); err != nil {
		t.Fatalf("own certificate: %v %s", err, out)
	}
	refused := map[string][]string{
		"no certificate":   {"--cafile", ca},
		"another device's": files(c2, "other"),
		"unverified CA":    files(selfSigned(t, "dev1"), "rogue"),
	}
	for name, extra := range refused {
		if out, err := pub(extra...); err == nil {
			t.Fatalf("%s accepted: %s", name, out)
		}
	}
	if out, err := mosquitto(t, "mosquitto_pub", append(append(hostPort(h.addr), login...), "-t", "/sys/pkcert/dev1/x", "-m", "x")...); err == nil {
		t.Fatalf("plain TCP accepted: %s", out)
	}
	// libmosquitto 2's --tls-version names the lowest version it allows, so
	// "tlsv1.1" still negotiates TLS 1.3; OpenSSL can offer TLS 1.1 alone.
	if _, err := exec.LookPath("openssl"); err == nil {
		out, err := mosquittoStdin(t, "openssl", "s_client", "-connect", h.tlsAddr, "-tls1_1")
		if err == nil || !strings.Contains(out, "Cipher is (NONE)") {
			t.Fatalf("TLS 1.1 handshake accepted: %s", out)
		}
	}

	// A live mosquitto_sub session is closed once its certificate is revoked.
	cmd := exec.Command("mosquitto_sub", append(append(append(hostPort(h.tlsAddr), login...), files(c1, "live")...), "-t", "/sys/pkcert/dev1/#")...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	eventually(t, "mosquitto_sub online", func() bool { return h.srv.Online("pkcert", "dev1") })
	start := time.Now()
	if _, err := h.certs.Revoke(context.Background(), c1.serial, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	for h.srv.Online("pkcert", "dev1") {
		if time.Since(start) > time.Second {
			t.Fatal("mosquitto_sub session open one second after revocation")
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("revocation closed the mosquitto_sub session in %v", time.Since(start))
	if out, err := pub(files(c1, "revoked")...); err == nil {
		t.Fatalf("revoked certificate accepted: %s", out)
	}
}
