package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/client"
	"github.com/iothub/iothub/edge"
	"github.com/iothub/iothub/hub"
)

// buildEdge compiles cmd/iotedge.
func buildEdge(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "iotedge")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/iotedge").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// edgeProc is a running `iotedge` with its log kept for assertions.
type edgeProc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	log  bytes.Buffer
	done chan error
}

func startEdge(t *testing.T, bin string, args ...string) *edgeProc {
	t.Helper()
	p := &edgeProc{cmd: exec.Command(bin, args...), done: make(chan error, 1)}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	scanned := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
		close(scanned)
	}()
	go func() {
		<-scanned
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("iotedge %s log:\n%s", args[0], p.output())
		}
	})
	return p
}

func (p *edgeProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// wait returns the exit status once the process ends, failing after d.
func (p *edgeProc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case err := <-p.done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(d):
		t.Fatalf("iotedge still running after %v", d)
		return -1
	}
}

// eventually polls cond every 100 ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startSWTPM runs Debian's TPM 2.0 simulator on 127.0.0.1 and returns its
// command address (the control port is the next one).
func startSWTPM(t *testing.T) string {
	t.Helper()
	bin := needTool(t, "swtpm")
	for attempt := 0; attempt < 20; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+1)); err != nil {
			continue
		} else {
			l2.Close()
		}
		cmd := exec.Command(bin, "socket", "--tpm2", "--tpmstate", "dir="+t.TempDir(),
			"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
			"--flags", "not-need-init,startup-clear")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		for i := 0; i < 200; i++ {
			if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port+1)); err == nil {
				c.Close()
				return addr
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatal("swtpm did not start")
	}
	t.Fatal("no free port pair for swtpm")
	return ""
}

// keyMaterial lists files in dir that hold secrets or keys.
func keyMaterial(t *testing.T, dir string, secrets ...string) []string {
	t.Helper()
	var found []string
	filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(path)
		name := filepath.Base(path)
		switch {
		case strings.HasPrefix(name, "key-"), strings.HasPrefix(name, "tpmkey-"), name == "device.secret":
			found = append(found, name)
		case bytes.Contains(b, []byte("PRIVATE KEY")):
			found = append(found, name+" (PEM private key)")
		default:
			for _, s := range secrets {
				if s != "" && bytes.Contains(b, []byte(s)) {
					found = append(found, name+" (a secret)")
				}
			}
		}
		return nil
	})
	return found
}

func TestEdgeAgentFileKeyStore(t *testing.T) {
	edgeFlow(t, "file", "rsa2048")
}

func TestEdgeAgentTPMKeyStore(t *testing.T) {
	edgeFlow(t, "tpm", "p256")
}

// edgeFlow runs the seeds' device flow from zero: a certificate product
// with dynamic activation and a device pre-registered by serial; iotedge
// with only PK, PS, SN and the CA file activates, enrolls, comes online
// over mutual TLS, posts measurepoints and answers calls; a revoked
// certificate is refused; reset revokes and wipes.
func edgeFlow(t *testing.T, keystore, keyType string) {
	var tpmArgs []string
	if keystore == "tpm" {
		tpmArgs = []string{"--tpm-swtpm", startSWTPM(t)}
	}
	bin := buildEdge(t)
	th := startHub(t, "")
	ctx := context.Background()
	prod, err := th.admin.CreateProduct(ctx, map[string]any{"name": "gateway", "authMode": "certificate", "dynamicActivation": true})
	if err != nil {
		t.Fatal(err)
	}
	const serialNo = "SN-0001"
	if _, err := th.admin.CreateDevice(ctx, prod.ProductKey, serialNo); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	caFile := filepath.Join(work, "ca.pem")
	if err := os.WriteFile(caFile, th.get(t, "/ca.pem"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(work, "state")
	common := append([]string{
		"--state", state, "--ca", caFile,
		"--broker", "ssl://" + th.MQTTSAddr(), "--api", th.HTTPSURL(),
		"--product-key", prod.ProductKey, "--product-secret", prod.ProductSecret, "--device-key", serialNo,
		"--keystore", keystore, "--key-type", keyType,
	}, tpmArgs...)
	runArgs := append([]string{"run", "--interval", "300ms", "--metrics-command", `echo {"temp":21.5,"rpm":900}`}, common...)

	devPath := "/api/v1/products/" + prod.ProductKey + "/devices/" + serialNo
	deviceState := func() iothub.DeviceState {
		d, err := th.admin.Device(ctx, prod.ProductKey, serialNo)
		if err != nil {
			return ""
		}
		return d.State
	}
	type certInfo struct {
		Serial, Status, Reason string
	}
	certs := func() map[string]certInfo {
		var out struct {
			Certificates []certInfo `json:"certificates"`
		}
		do(t, th.admin, "GET", devPath+"/certificates", nil, &out, 200)
		m := map[string]certInfo{}
		for _, c := range out.Certificates {
			m[c.Serial] = c
		}
		return m
	}
	readSerial := func() string {
		b, _ := os.ReadFile(filepath.Join(state, "serial"))
		return strings.TrimSpace(string(b))
	}

	agent := startEdge(t, bin, runArgs...)
	eventually(t, 60*time.Second, "device online", func() bool { return deviceState() == iothub.StateOnline })
	first := readSerial()
	if c, ok := certs()[first]; !ok || c.Status != "valid" {
		t.Fatalf("agent's serial %q is not a valid certificate of the device: %v", first, certs())
	}
	if !strings.Contains(agent.output(), "activated") || !strings.Contains(agent.output(), "enrolled") {
		t.Fatalf("agent did not log activation and enrollment")
	}

	// State dir: 0700, files 0600, the factory ProductSecret not kept.
	if fi, _ := os.Stat(state); fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir mode %v", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(state)
	for _, e := range entries {
		fi, _ := e.Info()
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", e.Name(), fi.Mode().Perm())
		}
		b, _ := os.ReadFile(filepath.Join(state, e.Name()))
		if bytes.Contains(b, []byte(prod.ProductSecret)) {
			t.Errorf("%s holds the ProductSecret", e.Name())
		}
	}
	if keystore == "tpm" {
		if _, err := os.Stat(filepath.Join(state, "tpmkey-current.priv")); err != nil {
			t.Fatalf("no TPM key blob: %v", err)
		}
		if m, _ := filepath.Glob(filepath.Join(state, "key-*.pem")); len(m) != 0 {
			t.Fatalf("TPM flow wrote a file key: %v", m)
		}
	}

	// Measurepoints are readable through the API.
	eventually(t, 20*time.Second, "measurepoints", func() bool {
		var mp struct {
			Measurepoints map[string]json.RawMessage `json:"measurepoints"`
		}
		do(t, th.admin, "GET", devPath+"/measurepoints", nil, &mp, 200)
		return string(mp.Measurepoints["temp"]) == "21.5" && string(mp.Measurepoints["rpm"]) == "900"
	})

	// Service calls from the API are answered.
	type callReply struct {
		Code    int             `json:"code"`
		Data    json.RawMessage `json:"data"`
		Message string          `json:"message"`
	}
	var rep callReply
	do(t, th.admin, "POST", devPath+"/services/echo", map[string]any{"params": map[string]any{"x": 1}, "timeoutMs": 10000}, &rep, 200)
	var echoed map[string]int
	if rep.Code != 200 || json.Unmarshal(rep.Data, &echoed) != nil || echoed["x"] != 1 || len(echoed) != 1 {
		t.Fatalf("echo reply = %+v %s", rep, rep.Data)
	}
	do(t, th.admin, "POST", devPath+"/services/ping", map[string]any{"params": map[string]any{}, "timeoutMs": 10000}, &rep, 200)
	var pong map[string]any
	if rep.Code != 200 || json.Unmarshal(rep.Data, &pong) != nil || pong["pong"] != true {
		t.Fatalf("ping reply = %+v %s", rep, rep.Data)
	}
	do(t, th.admin, "POST", devPath+"/services/selfDestruct", map[string]any{"params": map[string]any{}, "timeoutMs": 10000}, &rep, 200)
	if rep.Code != 1101 {
		t.Fatalf("unknown service answered %+v, want code 1101", rep)
	}
	do(t, th.admin, "POST", devPath+"/measurepoints/set", map[string]any{"params": map[string]any{"setpoint": 42}}, &rep, 200)
	if rep.Code != 200 {
		t.Fatalf("measurepoint set reply = %+v", rep)
	}
	eventually(t, 20*time.Second, "set point posted back", func() bool {
		var mp struct {
			Measurepoints map[string]json.RawMessage `json:"measurepoints"`
		}
		do(t, th.admin, "GET", devPath+"/measurepoints", nil, &mp, 200)
		return string(mp.Measurepoints["setpoint"]) == "42"
	})

	// Revocation: the hub drops the session and refuses that certificate.
	// The agent enrolls once more with a fresh key (the hub allows it
	// here); the revoked certificate never gets back in.
	do(t, th.admin, "POST", "/api/v1/certificates/"+first+"/revoke", map[string]any{"reason": "keyCompromise"}, nil, 200)
	eventually(t, 60*time.Second, "a new certificate after revocation", func() bool {
		s := readSerial()
		return s != "" && s != first
	})
	eventually(t, 60*time.Second, "device online again", func() bool { return deviceState() == iothub.StateOnline })
	out := agent.output()
	if !strings.Contains(out, "perhaps revoked") {
		t.Fatalf("agent did not notice the refusal of its revoked certificate")
	}
	cs := certs()
	if cs[first].Status != "revoked" || cs[readSerial()].Status != "valid" {
		t.Fatalf("certificates after revocation: %v", cs)
	}

	second := readSerial()
	if keystore == "tpm" {
		// Revoked while the hub will not issue another certificate (the
		// device is disabled): the agent stops with exit status 3 and
		// says why, instead of knocking forever.
		do(t, th.admin, "POST", devPath+"/disable", nil, nil, 200)
		do(t, th.admin, "POST", "/api/v1/certificates/"+second+"/revoke", map[string]any{"reason": "keyCompromise"}, nil, 200)
		if code := agent.wait(t, 60*time.Second); code != 3 {
			t.Fatalf("iotedge run exited %d after revocation with enrollment refused, want 3", code)
		}
		if out := agent.output(); !strings.Contains(out, "refused a new enrollment") {
			t.Fatalf("no clear message when the hub refuses re-enrollment:\n%s", out)
		}
		do(t, th.admin, "POST", devPath+"/enable", nil, nil, 200)
	} else {
		agent.cmd.Process.Signal(syscall.SIGTERM)
		if code := agent.wait(t, 20*time.Second); code != 0 {
			t.Fatalf("iotedge run exited %d on SIGTERM", code)
		}
	}

	// Reset: the current certificate is revoked (already, in the TPM
	// flow) and no key material is left.
	deviceSecret, _ := os.ReadFile(filepath.Join(state, "device.secret"))
	reset := startEdge(t, bin, append([]string{"reset"}, common...)...)
	if code := reset.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("iotedge reset exited %d:\n%s", code, reset.output())
	}
	if c := certs()[second]; c.Status != "revoked" {
		t.Fatalf("after reset certificate %s is %q, want revoked", second, c.Status)
	}
	if left := keyMaterial(t, state, strings.TrimSpace(string(deviceSecret)), prod.ProductSecret); len(left) != 0 {
		t.Fatalf("key material left after reset: %v", left)
	}

	// A reset device cannot activate again with the factory secret: the
	// agent stops with a clear message and exit status 3.
	again := startEdge(t, bin, runArgs...)
	if code := again.wait(t, 60*time.Second); code != 3 {
		t.Fatalf("iotedge run after reset exited %d, want 3:\n%s", code, again.output())
	}
	if out := again.output(); !strings.Contains(out, "activation refused") {
		t.Fatalf("no clear message on refused activation:\n%s", out)
	}
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestEdgeAgentBuffersThroughHubOutage stops the hub under a running agent:
// the agent keeps measuring into its disk buffer, reconnects with backoff
// once the hub is back (same data, same ports), and resumes the buffered
// posts with their original times. It also checks the reboot service, a
// pluggable service command and a passphrase-sealed key file.
func TestEdgeAgentBuffersThroughHubOutage(t *testing.T) {
	bin := buildEdge(t)
	dir := t.TempDir()
	cfg := hub.Config{
		DataDir: dir, MQTTAddr: "", MQTTSAddr: freeAddr(t), HTTPAddr: freeAddr(t), HTTPSAddr: freeAddr(t),
		Hostnames: []string{"localhost", "127.0.0.1"},
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	h, err := hub.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { h.Close() }()
	admin, err := client.New(h.HTTPURL(), h.AdminKey(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	prod, err := admin.CreateProduct(ctx, map[string]any{"name": "meters", "authMode": "certificate", "dynamicActivation": true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateDevice(ctx, prod.ProductKey, "M-7"); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	caFile := filepath.Join(work, "ca.pem")
	os.WriteFile(caFile, h.ChainPEM(), 0o644)
	script := filepath.Join(work, "svc.sh")
	os.WriteFile(script, []byte("#!/bin/sh\nprintf '{\"service\":\"%s\",\"input\":%s}' \"$1\" \"$(cat)\"\n"), 0o755)
	passFile := filepath.Join(work, "passphrase")
	os.WriteFile(passFile, []byte("factory-unique passphrase\n"), 0o600)
	state := filepath.Join(work, "state")
	agent := startEdge(t, bin, "run", "--state", state, "--ca", caFile,
		"--broker", "ssl://"+cfg.MQTTSAddr, "--api", h.HTTPSURL(),
		"--product-key", prod.ProductKey, "--product-secret", prod.ProductSecret, "--device-key", "M-7",
		"--key-type", "p256", "--interval", "200ms", "--metrics-command", `date +{"t":%s%3N}`,
		"--service-command", script, "--passphrase-file", passFile)
	devPath := "/api/v1/products/" + prod.ProductKey + "/devices/M-7"
	online := func() bool {
		d, err := admin.Device(ctx, prod.ProductKey, "M-7")
		return err == nil && d.State == iothub.StateOnline
	}
	eventually(t, 60*time.Second, "device online", online)
	keyPEM, _ := os.ReadFile(filepath.Join(state, "key-current.pem"))
	if !bytes.Contains(keyPEM, []byte("IOTEDGE SEALED PRIVATE KEY")) || bytes.Contains(keyPEM, []byte("BEGIN PRIVATE KEY")) {
		t.Fatalf("key not sealed with the passphrase:\n%s", keyPEM)
	}

	var rep struct {
		Code int             `json:"code"`
		Data json.RawMessage `json:"data"`
	}
	do(t, admin, "POST", devPath+"/services/calibrate", map[string]any{"params": map[string]any{"gain": 2}, "timeoutMs": 10000}, &rep, 200)
	var out struct {
		Service string         `json:"service"`
		Input   map[string]int `json:"input"`
	}
	if rep.Code != 200 || json.Unmarshal(rep.Data, &out) != nil || out.Service != "calibrate" || out.Input["gain"] != 2 {
		t.Fatalf("service command reply: %d %s", rep.Code, rep.Data)
	}
	do(t, admin, "POST", devPath+"/services/reboot", map[string]any{"params": map[string]any{}, "timeoutMs": 10000}, &rep, 200)
	if rep.Code != 200 {
		t.Fatalf("reboot reply code %d", rep.Code)
	}
	eventually(t, 20*time.Second, "reconnect after reboot request", func() bool {
		return strings.Count(agent.output(), "msg=online") >= 2
	})
	if _, err := os.Stat(filepath.Join(state, "reboot.request")); err != nil {
		t.Fatalf("reboot request not recorded: %v", err)
	}

	// Outage.
	// down is taken before Close, and two posts more than the check below
	// are waited for, so a post timed during Close or one at the edge of
	// the window cannot make the count fall short.
	down := time.Now()
	h.Close()
	buffer := filepath.Join(state, "buffer.jsonl")
	eventually(t, 20*time.Second, "posts buffered on disk", func() bool {
		b, _ := os.ReadFile(buffer)
		return bytes.Count(b, []byte("\n")) >= 7
	})
	if fi, _ := os.Stat(buffer); fi.Mode().Perm() != 0o600 {
		t.Fatalf("buffer mode %v", fi.Mode().Perm())
	}
	up := time.Now()
	if h, err = hub.Open(cfg); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "device online after the outage", online)
	eventually(t, 20*time.Second, "buffer drained", func() bool {
		_, err := os.Stat(buffer)
		return os.IsNotExist(err)
	})
	var samples struct {
		Samples []iothub.Sample `json:"samples"`
	}
	eventually(t, 20*time.Second, "resumed samples stored", func() bool {
		do(t, admin, "GET", devPath+"/telemetry?limit=1000", nil, &samples, 200)
		n := 0
		for _, s := range samples.Samples {
			if !s.Time.Before(down) && s.Time.Before(up) {
				n++
			}
		}
		return n >= 5
	})
	if !strings.Contains(agent.output(), "resumed buffered measurepoints") {
		t.Fatal("agent did not log the resume")
	}
}

// lockedBuffer is an io.Writer safe for a logger and a reader at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestEdgeLibraryRenewsCertificate embeds the edge library as a device
// maker would and sets the renewal point near the start of the
// certificate's life: the agent renews over MQTT with a fresh key,
// reconnects with the successor, and the hub then supersedes the old one.
func TestEdgeLibraryRenewsCertificate(t *testing.T) {
	t.Run("file", func(t *testing.T) { renewFlow(t, false) })
	t.Run("tpm", func(t *testing.T) { renewFlow(t, true) })
}

func renewFlow(t *testing.T, useTPM bool) {
	var ks edge.KeyStore
	th := startHub(t, "")
	ctx := context.Background()
	prod, err := th.admin.CreateProduct(ctx, map[string]any{"name": "renewing", "authMode": "certificate", "dynamicActivation": true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := th.admin.CreateDevice(ctx, prod.ProductKey, "R-1"); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	caFile := filepath.Join(work, "ca.pem")
	os.WriteFile(caFile, th.ChainPEM(), 0o644)
	state := filepath.Join(work, "state")
	if useTPM {
		addr := startSWTPM(t)
		host, port, _ := net.SplitHostPort(addr)
		var p int
		fmt.Sscan(port, &p)
		tks, err := edge.OpenSWTPM(state, addr, net.JoinHostPort(host, fmt.Sprint(p+1)))
		if err != nil {
			t.Fatal(err)
		}
		defer tks.Close()
		ks = tks
	}
	var logs lockedBuffer
	states := make(chan string, 100)
	a, err := edge.New(edge.Config{
		KeyStore: ks,
		StateDir: state, CAFile: caFile, Broker: "ssl://" + th.MQTTSAddr(), API: th.HTTPSURL(),
		ProductKey: prod.ProductKey, ProductSecret: prod.ProductSecret, DeviceKey: "R-1",
		KeyType: edge.P256, Interval: time.Second, RenewFraction: 1e-9, RequestTimeout: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		OnState: func(s string) {
			select {
			case states <- s:
			default: // never block the agent
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	readSerial := func() string {
		b, _ := os.ReadFile(filepath.Join(state, "serial"))
		return strings.TrimSpace(string(b))
	}
	var first string
	deadline := time.After(60 * time.Second)
	for renewed := false; !renewed; {
		select {
		case s := <-states:
			switch s {
			case "enrolled":
				first = readSerial()
			case "renewed":
				renewed = true
			}
		case <-deadline:
			t.Fatalf("no renewal within 60s:\n%s", logs.String())
		}
	}
	second := readSerial()
	if first == "" || second == "" || first == second {
		t.Fatalf("serial before %q after %q", first, second)
	}
	if fileKeys, _ := filepath.Glob(filepath.Join(state, "key-*.pem")); useTPM != (len(fileKeys) == 0) {
		t.Fatalf("TPM=%v but file keys are %v", useTPM, fileKeys)
	}
	devPath := "/api/v1/products/" + prod.ProductKey + "/devices/R-1"
	eventually(t, 30*time.Second, "old certificate superseded once the new one is used", func() bool {
		var out struct {
			Certificates []struct{ Serial, Status, Reason string } `json:"certificates"`
		}
		do(t, th.admin, "GET", devPath+"/certificates", nil, &out, 200)
		for _, c := range out.Certificates {
			if c.Serial == first {
				return c.Status == "revoked" && c.Reason == "superseded"
			}
		}
		return false
	})
}

// TestEdgeAgentSecretProductWithConfigFile runs iotedge for a secret-mode
// product from a JSON config file: dynamic activation then a mode-2 login
// over TLS verified against the pinned CA, without a client certificate.
func TestEdgeAgentSecretProductWithConfigFile(t *testing.T) {
	bin := buildEdge(t)
	th := startHub(t, "")
	ctx := context.Background()
	prod, err := th.admin.CreateProduct(ctx, map[string]any{"name": "sensors", "authMode": "secret", "dynamicActivation": true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := th.admin.CreateDevice(ctx, prod.ProductKey, "S-1"); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	caFile := filepath.Join(work, "ca.pem")
	os.WriteFile(caFile, th.ChainPEM(), 0o644)
	state := filepath.Join(work, "state")
	conf, _ := json.Marshal(map[string]any{
		"state": state, "ca": caFile, "broker": "ssl://" + th.MQTTSAddr(), "auth": "secret",
		"product-key": prod.ProductKey, "product-secret": prod.ProductSecret, "device-key": "S-1",
		"interval": "300ms",
	})
	confFile := filepath.Join(work, "iotedge.json")
	os.WriteFile(confFile, conf, 0o600)
	agent := startEdge(t, bin, "run", "--config", confFile)
	eventually(t, 60*time.Second, "device online", func() bool {
		d, err := th.admin.Device(ctx, prod.ProductKey, "S-1")
		return err == nil && d.State == iothub.StateOnline
	})
	eventually(t, 20*time.Second, "built-in system metrics", func() bool {
		var mp struct {
			Measurepoints map[string]json.RawMessage `json:"measurepoints"`
		}
		do(t, th.admin, "GET", "/api/v1/products/"+prod.ProductKey+"/devices/S-1/measurepoints", nil, &mp, 200)
		return mp.Measurepoints["uptime"] != nil && mp.Measurepoints["load1"] != nil
	})
	if m, _ := filepath.Glob(filepath.Join(state, "key-*")); len(m) != 0 {
		t.Fatalf("secret product made keys: %v", m)
	}
	agent.cmd.Process.Signal(syscall.SIGTERM)
	if code := agent.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}

	// A config file with an unknown key is refused before anything happens.
	bad := filepath.Join(work, "bad.json")
	os.WriteFile(bad, []byte(`{"state":"`+state+`","prodkey":"x"}`), 0o600)
	p := startEdge(t, bin, "run", "--config", bad)
	if code := p.wait(t, 20*time.Second); code != 1 || !strings.Contains(p.output(), `unknown key "prodkey"`) {
		t.Fatalf("bad config: exit %d\n%s", code, p.output())
	}
}

// TestEdgeClockGuard builds iotedge with a build date in the future (as a
// device whose clock was reset would see it): it refuses to act, says why,
// and sends nothing to the hub.
func TestEdgeClockGuard(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "iotedge")
	out, err := exec.Command("go", "build", "-ldflags", "-X github.com/iothub/iothub/edge.BuildDate=2999-01-01", "-o", bin, "../cmd/iotedge").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	th := startHub(t, "")
	ctx := context.Background()
	prod, err := th.admin.CreateProduct(ctx, map[string]any{"name": "clock", "authMode": "certificate", "dynamicActivation": true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := th.admin.CreateDevice(ctx, prod.ProductKey, "C-1"); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	caFile := filepath.Join(work, "ca.pem")
	os.WriteFile(caFile, th.ChainPEM(), 0o644)
	state := filepath.Join(work, "state")
	p := startEdge(t, bin, "run", "--state", state, "--ca", caFile,
		"--broker", "ssl://"+th.MQTTSAddr(), "--api", th.HTTPSURL(),
		"--product-key", prod.ProductKey, "--product-secret", prod.ProductSecret, "--device-key", "C-1")
	if code := p.wait(t, 30*time.Second); code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, p.output())
	}
	if !strings.Contains(p.output(), "clock is wrong") || !strings.Contains(p.output(), "2999-01-01") {
		t.Fatalf("no clear clock message:\n%s", p.output())
	}
	if entries, _ := os.ReadDir(state); len(entries) != 0 {
		t.Fatalf("state written despite the clock guard: %v", entries)
	}
	if d, err := th.admin.Device(ctx, prod.ProductKey, "C-1"); err != nil || d.State != iothub.StateInactive {
		t.Fatalf("device state %v (%v), want inactive: the agent must not have activated", d.State, err)
	}
}
