package e2e

import (
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iothub/iothub/edge"
)

// rotAgent is an edge agent run in-process against a real hub.
type rotAgent struct {
	state  string
	logs   *lockedBuffer
	online chan struct{}
	stop   func()
}

// startRotAgent runs an agent for device dk of pk with caFile as its
// pinned CA, its key in ks (nil: a file in state), refreshing its trust
// every refresh (and at start, and on the hub's notice).
func startRotAgent(t *testing.T, th *testHub, pk, dk, secret, caFile, state string, ks edge.KeyStore, refresh time.Duration) *rotAgent {
	t.Helper()
	r := &rotAgent{state: state, logs: &lockedBuffer{}, online: make(chan struct{}, 100)}
	a, err := edge.New(edge.Config{
		KeyStore: ks, StateDir: state, CAFile: caFile, Broker: "ssl://" + th.MQTTSAddr(), API: th.HTTPSURL(),
		ProductKey: pk, DeviceKey: dk, DeviceSecret: secret, Auth: edge.AuthCertificate,
		KeyType: edge.P256, Interval: time.Second, RequestTimeout: 5 * time.Second,
		TrustRefresh: refresh, BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second,
		Logger: slog.New(slog.NewTextHandler(r.logs, nil)),
		OnState: func(s string) {
			if s == "online" {
				select {
				case r.online <- struct{}{}:
				default:
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once bool
	r.stop = func() {
		if once {
			return
		}
		once = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent %s: %v\n%s", dk, err, r.logs.String())
		}
		a.Close()
	}
	t.Cleanup(r.stop)
	return r
}

// certCA is the key id of the CA that issued the agent's stored certificate.
func (r *rotAgent) certCA(t *testing.T) string {
	st, err := edge.OpenState(r.state)
	if err != nil {
		t.Fatal(err)
	}
	c, err := st.Certificate()
	if err != nil || c == nil {
		return ""
	}
	return hex.EncodeToString(c.AuthorityKeyId)
}

// settle waits until the agent has reported no new session for half a
// second (a renewal reconnects), forgetting the ones it reported.
func (r *rotAgent) settle() {
	for {
		select {
		case <-r.online:
		case <-time.After(500 * time.Millisecond):
			return
		}
	}
}

func (r *rotAgent) waitOnline(t *testing.T, what string) {
	t.Helper()
	select {
	case <-r.online:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: not online within 30 s:\n%s", what, r.logs.String())
	}
}

// TestEdgeFollowsCARollover: agents enrolled under the first CA follow an
// issuing rotation, a root rotation and the retirement of the old CAs by
// themselves: they take the signed bundle (the file-key agent only at
// start and on the hub's notice, its schedule being an hour; the TPM agent
// on its schedule too), renew onto the active CA and stay online; an agent offline during the whole rollover, holding only
// the first root, comes back through the cross-signed chain and updates
// itself.
func TestEdgeFollowsCARollover(t *testing.T) {
	th := startHub(t, "")
	work := t.TempDir()
	caFile := filepath.Join(work, "ca.pem")
	os.WriteFile(caFile, th.ChainPEM(), 0o644)
	p := th.newProduct(t, map[string]any{"name": "edge-rot", "authMode": "certificate", "productKey": "EDGEROT"})
	dOn := th.newDevice(t, p, "ALWAYS-ON")
	dOff := th.newDevice(t, p, "AWAY")

	dTPM := th.newDevice(t, p, "TPM-ON")

	on := startRotAgent(t, th, p.ProductKey, dOn.DeviceKey, dOn.DeviceSecret, caFile, filepath.Join(work, "on"), nil, time.Hour)
	on.waitOnline(t, "first start")
	addr := startSWTPM(t)
	host, port, _ := net.SplitHostPort(addr)
	var pn int
	fmt.Sscan(port, &pn)
	tks, err := edge.OpenSWTPM(filepath.Join(work, "tpm"), addr, net.JoinHostPort(host, fmt.Sprint(pn+1)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tks.Close() }) // after the agent's stop, registered later
	tpm := startRotAgent(t, th, p.ProductKey, dTPM.DeviceKey, dTPM.DeviceSecret, caFile, filepath.Join(work, "tpm"), tks, 200*time.Millisecond)
	tpm.waitOnline(t, "the TPM agent's first start")
	away := startRotAgent(t, th, p.ProductKey, dOff.DeviceKey, dOff.DeviceSecret, caFile, filepath.Join(work, "away"), nil, 200*time.Millisecond)
	away.waitOnline(t, "the away agent's first start")
	away.stop()
	firstIssuing := on.certCA(t)
	if firstIssuing == "" || away.certCA(t) != firstIssuing {
		t.Fatalf("agents enrolled under %q and %q", firstIssuing, away.certCA(t))
	}

	var rot struct{ ID, IssuingID string }
	do(t, th.admin, "POST", "/api/v1/authority/rotate", map[string]any{"root": false}, &rot, 201)
	for _, r := range []*rotAgent{on, tpm} {
		eventually(t, 30*time.Second, "the agents to renew onto the new issuing CA", func() bool { return r.certCA(t) == rot.ID })
		r.waitOnline(t, "after the issuing rotation")
	}

	do(t, th.admin, "POST", "/api/v1/authority/rotate", map[string]any{"root": true}, &rot, 201)
	for _, r := range []*rotAgent{on, tpm} {
		eventually(t, 30*time.Second, "the agents to renew onto the new root's issuing CA", func() bool { return r.certCA(t) == rot.IssuingID })
		r.waitOnline(t, "after the root rotation")
	}
	eventually(t, 10*time.Second, "the agent to store the bundle with the new root", func() bool {
		b, _ := os.ReadFile(filepath.Join(on.state, edge.FileTrustBundle))
		return strings.Contains(string(b), strings.TrimSpace(string(th.get(t, "/ca/"+rot.ID+".pem"))))
	})

	for _, r := range []*rotAgent{on, tpm} {
		r.settle()
	}
	for id, s := range th.statuses(t) {
		if s == "issuing/trusted" {
			do(t, th.admin, "POST", "/api/v1/authority/"+id+"/retire", nil, nil, 200)
		}
	}
	for id, s := range th.statuses(t) {
		if s == "root/trusted" {
			do(t, th.admin, "POST", "/api/v1/authority/"+id+"/retire", nil, nil, 200)
		}
	}
	if !strings.Contains(on.logs.String(), "renewing") {
		t.Fatalf("the agent never noticed its CA went inactive:\n%s", on.logs.String())
	}
	time.Sleep(time.Second) // a session closed by the retirements would be back online by now
	for _, r := range []*rotAgent{on, tpm} {
		select {
		case <-r.online:
			t.Fatalf("the retirements disconnected an agent that had renewed:\n%s", r.logs.String())
		default:
		}
	}

	// The away agent holds only the first root and a certificate of a retired CA.
	back := startRotAgent(t, th, p.ProductKey, dOff.DeviceKey, dOff.DeviceSecret, caFile, filepath.Join(work, "away"), nil, 200*time.Millisecond)
	back.waitOnline(t, "the away agent after the rollover")
	if got := back.certCA(t); got != rot.IssuingID {
		t.Fatalf("the away agent came back with a certificate of %s, want the active issuing CA %s", got, rot.IssuingID)
	}
}
