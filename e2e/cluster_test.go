package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/client"
	"github.com/iothub/iothub/hub"
	"github.com/iothub/iothub/nats/natstest"
	"github.com/iothub/iothub/postgres/pgtest"
	"github.com/iothub/iothub/sign"
)

// startNode opens a hub node on dir whose registry is the PostgreSQL
// database at dbURL and whose bus is the NATS server at natsURL.
func startNode(t *testing.T, dir, dbURL, natsURL string) *testHub {
	t.Helper()
	return startHubWith(t, dir, hub.Config{DatabaseURL: dbURL, NATSURL: natsURL})
}

// joinCluster prepares a second node's data directory the way an operator
// would: a copy of the first node's data key (secrets sealed in the shared
// database), CA directory (one CA for the cluster) and bootstrap key file.
func joinCluster(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	err := filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		top := strings.Split(rel, string(filepath.Separator))[0]
		if rel != "." && top != "ca" && top != "data.key" && top != "admin.key" {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), info.Mode().Perm())
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
	return to
}

// waitLost waits for a connection-lost notice and fails unless it comes
// within one second of start.
func waitLost(t *testing.T, lost <-chan time.Time, start time.Time, what string) {
	t.Helper()
	select {
	case at := <-lost:
		t.Logf("%s on node A closed the session on node B %v after the API call", what, at.Sub(start))
		if at.Sub(start) > time.Second {
			t.Fatalf("session on node B closed %v after %s on node A, want within 1 s", at.Sub(start), what)
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("%s on node A did not close the live session on node B", what)
	}
}

// TestClusterOfTwoNodes runs two hub nodes on one PostgreSQL database and
// one NATS server: what is done through one node's API holds on the other
// node's MQTT listeners, and both APIs read the same registry.
func TestClusterOfTwoNodes(t *testing.T) {
	dbURL := pgtest.Standalone(t)
	natsURL := natstest.URL(t)
	a := startNode(t, t.TempDir(), dbURL, natsURL)
	b := startNode(t, joinCluster(t, a.dir), dbURL, natsURL)
	if !bytes.Equal(a.ChainPEM(), b.ChainPEM()) {
		t.Fatal("the nodes do not share one CA")
	}
	if _, err := os.Stat(filepath.Join(b.dir, "iothub.db")); err == nil {
		t.Fatal("node B made a SQLite file although it was given a database URL")
	}

	// A node without the first node's bootstrap key is refused with a clear error.
	lone := t.TempDir()
	_, err := hub.Open(hub.Config{DataDir: lone, HTTPAddr: "127.0.0.1:0", DatabaseURL: dbURL, NATSURL: natsURL,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))})
	if err == nil || !strings.Contains(err.Error(), "admin.key") {
		t.Fatalf("a node with its own data dir joined: %v", err)
	}

	// An unreachable NATS server is an error at start, not a silent single node.
	_, err = hub.Open(hub.Config{DataDir: joinCluster(t, a.dir), HTTPAddr: "127.0.0.1:0", DatabaseURL: dbURL,
		NATSURL: "nats://127.0.0.1:1", Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))})
	if err == nil || !strings.Contains(err.Error(), "nats") {
		t.Fatalf("a node without its NATS server started: %v", err)
	}

	t.Run("secret device", func(t *testing.T) {
		p := a.newProduct(t, map[string]any{"name": "meter"})
		d := a.newDevice(t, p, "SN-1")
		devPath := "/api/v1/products/" + p.ProductKey + "/devices/" + d.DeviceKey

		// Created through A, logs in on B; both APIs see it online.
		o := deviceOptions("tcp://"+b.MQTTAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic)
		lost := make(chan time.Time, 1)
		o.SetConnectionLostHandler(func(paho.Client, error) { lost <- time.Now() })
		c := connect(t, o)
		b.waitState(t, p.ProductKey, d.DeviceKey, iothub.StateOnline)
		a.waitState(t, p.ProductKey, d.DeviceKey, iothub.StateOnline)

		// Telemetry posted through B reads back through B's API and A's.
		up := "/sys/" + p.ProductKey + "/" + d.DeviceKey + "/thing/measurepoint/post"
		replies := make(chan string, 1)
		c.Subscribe(up+"_reply", 1, func(_ paho.Client, m paho.Message) { replies <- string(m.Payload()) }).Wait()
		c.Publish(up, 1, false, `{"id":"1","version":"1.0","method":"thing.measurepoint.post","params":{"measurepoints":{"temp":19.25},"time":1700000000000}}`).Wait()
		select {
		case r := <-replies:
			if !strings.Contains(r, `"code":200`) {
				t.Fatalf("measurepoint reply %s", r)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no measurepoint reply from node B")
		}
		for _, n := range []*testHub{b, a} {
			eventually(t, 5*time.Second, "measurepoint through "+n.HTTPURL(), func() bool {
				var mp struct{ Measurepoints map[string]json.RawMessage }
				do(t, n.admin, "GET", devPath+"/measurepoints", nil, &mp, 200)
				return string(mp.Measurepoints["temp"]) == "19.25"
			})
		}

		// Disabled through A: B closes the session and refuses logins.
		start := time.Now()
		do(t, a.admin, "POST", devPath+"/disable", nil, nil, 200)
		waitLost(t, lost, start, "disable")
		if err := refused(deviceOptions("tcp://"+b.MQTTAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic)); err == nil {
			t.Fatal("node B let a device disabled on node A log in")
		}
		if s := b.deviceState(t, p.ProductKey, d.DeviceKey); s != iothub.StateDisabled {
			t.Fatalf("state on node B after disable on A: %s", s)
		}
		// Enabled through B: it logs in on A.
		do(t, b.admin, "POST", devPath+"/enable", nil, nil, 200)
		connect(t, deviceOptions("tcp://"+a.MQTTAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic))
		b.waitState(t, p.ProductKey, d.DeviceKey, iothub.StateOnline)
	})

	t.Run("service call across nodes", func(t *testing.T) {
		p := a.newProduct(t, map[string]any{"name": "pump"})
		d := a.newDevice(t, p, "P-1")
		devPath := "/api/v1/products/" + p.ProductKey + "/devices/" + d.DeviceKey
		o := deviceOptions("tcp://"+b.MQTTAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic)
		o.SetDefaultPublishHandler(func(c paho.Client, m paho.Message) {
			var req struct {
				ID     json.RawMessage
				Params json.RawMessage
			}
			json.Unmarshal(m.Payload(), &req)
			reply, _ := json.Marshal(map[string]any{"id": req.ID, "code": 200, "data": map[string]any{"echo": req.Params}, "message": ""})
			c.Publish(m.Topic()+"_reply", 1, false, reply)
		})
		c := connect(t, o)
		b.waitState(t, p.ProductKey, d.DeviceKey, iothub.StateOnline)

		// Through A's API to the device on B, and back.
		var reply iothub.Reply
		do(t, a.admin, "POST", devPath+"/services/restart", map[string]any{"params": map[string]any{"delay": 7}, "timeoutMs": 5000}, &reply, 200)
		var data struct{ Echo struct{ Delay int } }
		if err := json.Unmarshal(reply.Data, &data); err != nil || reply.Code != 200 || data.Echo.Delay != 7 {
			t.Fatalf("reply through node A: code %d data %s (%v)", reply.Code, reply.Data, err)
		}
		// The same through B, where the device is.
		do(t, b.admin, "POST", devPath+"/services/restart", map[string]any{"params": map[string]any{"delay": 8}, "timeoutMs": 5000}, &reply, 200)
		if err := json.Unmarshal(reply.Data, &data); err != nil || data.Echo.Delay != 8 {
			t.Fatalf("reply through node B: %s (%v)", reply.Data, err)
		}

		// Gone from B: A answers offline.
		c.Disconnect(50)
		a.waitState(t, p.ProductKey, d.DeviceKey, iothub.StateOffline)
		do(t, a.admin, "POST", devPath+"/services/restart", map[string]any{}, nil, 409)
		// Registry says online but no node holds a session (a crashed
		// node leaves that behind): offline too, not a timeout.
		if err := a.Store().SetDeviceState(context.Background(), p.ProductKey, d.DeviceKey, iothub.StateOnline, time.Now()); err != nil {
			t.Fatal(err)
		}
		do(t, a.admin, "POST", devPath+"/services/restart", map[string]any{"timeoutMs": 5000}, nil, 409)
	})

	t.Run("certificate device", func(t *testing.T) {
		p := a.newProduct(t, map[string]any{"name": "gateway", "authMode": "certificate"})
		d := a.newDevice(t, p, "GW-1")
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: d.DeviceKey}}, key)
		if err != nil {
			t.Fatal(err)
		}
		csr := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
		var c issued
		do(t, a.admin, "POST", "/api/v1/products/"+p.ProductKey+"/devices/"+d.DeviceKey+"/certificates", map[string]any{"csr": csr}, &c, 201)
		keyDER, _ := x509.MarshalECPrivateKey(key)
		cert, err := tls.X509KeyPair([]byte(c.Cert), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
		if err != nil {
			t.Fatal(err)
		}
		login := func() *paho.ClientOptions {
			o := deviceOptions("ssl://"+b.MQTTSAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic)
			o.SetTLSConfig(b.tlsTo(t, &cert))
			return o
		}

		// Issued by A, accepted by B; revoked through A, B closes the session.
		o := login()
		lost := make(chan time.Time, 1)
		o.SetConnectionLostHandler(func(paho.Client, error) { lost <- time.Now() })
		connect(t, o)
		a.waitState(t, p.ProductKey, d.DeviceKey, iothub.StateOnline)
		start := time.Now()
		do(t, a.admin, "POST", "/api/v1/certificates/"+c.Serial+"/revoke", map[string]any{"reason": "keyCompromise"}, nil, 200)
		waitLost(t, lost, start, "revocation")
		// B refuses the certificate from the moment it hears the
		// revocation, not only once its store read confirms it.
		if err := refused(login()); err == nil {
			t.Fatal("node B let the revoked certificate straight back in")
		}
		var got struct{ Status string }
		do(t, b.admin, "GET", "/api/v1/certificates/"+c.Serial, nil, &got, 200)
		if got.Status != "revoked" {
			t.Fatalf("certificate status through node B: %q", got.Status)
		}
	})

	// The real binary joins through its environment (IOTHUB_DATABASE,
	// IOTHUB_NATS): a device made through its API logs in on node A, and
	// disabling it there closes that session.
	t.Run("iothub serve joins", func(t *testing.T) {
		bin := buildCLI(t)
		t.Setenv("IOTHUB_DATABASE", dbURL)
		t.Setenv("IOTHUB_NATS", natsURL)
		dir := joinCluster(t, a.dir)
		url, stop := serveBinary(t, bin, dir)
		defer stop()
		if _, err := os.Stat(filepath.Join(dir, "iothub.db")); err == nil {
			t.Fatal("iothub serve made a SQLite file although IOTHUB_DATABASE was set")
		}
		admin, err := client.New(url, a.AdminKey(), nil)
		if err != nil {
			t.Fatal(err)
		}
		cn := &testHub{dir: dir, admin: admin} // the API helpers need only admin
		p := cn.newProduct(t, map[string]any{"name": "via binary"})
		d := cn.newDevice(t, p, "BIN-1")
		o := deviceOptions("tcp://"+a.MQTTAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic)
		lost := make(chan time.Time, 1)
		o.SetConnectionLostHandler(func(paho.Client, error) { lost <- time.Now() })
		connect(t, o)
		cn.waitState(t, p.ProductKey, d.DeviceKey, iothub.StateOnline)
		start := time.Now()
		do(t, cn.admin, "POST", "/api/v1/products/"+p.ProductKey+"/devices/"+d.DeviceKey+"/disable", nil, nil, 200)
		select {
		case <-lost:
			t.Logf("disable through the binary closed the session on node A after %v", time.Since(start))
		case <-time.After(3 * time.Second):
			t.Fatal("disable through the binary did not close the session on node A")
		}
	})

	// Both nodes write audit events into one log.
	events, err := a.Store().AuditEvents(context.Background(), "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) == 0 {
		t.Fatal("no audit events in the shared store")
	}
}
