// Package e2e starts real hubs on loopback ports with real SQLite files
// and drives them with real clients: the API client, paho, openssl and
// Debian's mosquitto tools.
package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/iothub/iothub/client"
	"github.com/iothub/iothub/hub"
)

// testHub is a running hub and a bootstrap-key client for it.
type testHub struct {
	*hub.Hub
	dir   string
	admin *client.Client
	once  sync.Once
}

// startHub opens a hub on dir (a fresh temp dir when empty) with every
// listener on a free loopback port, and closes it when the test ends.
func startHub(t testing.TB, dir string) *testHub {
	t.Helper()
	return startHubWith(t, dir, hub.Config{})
}

// startHubWith is startHub with extra settings (database, bus) taken from extra.
func startHubWith(t testing.TB, dir string, extra hub.Config) *testHub {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	level := slog.LevelWarn
	if os.Getenv("IOTHUB_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	h, err := hub.Open(hub.Config{
		DataDir:         dir,
		MQTTAddr:        "127.0.0.1:0",
		MQTTSAddr:       "127.0.0.1:0",
		HTTPAddr:        "127.0.0.1:0",
		HTTPSAddr:       "127.0.0.1:0",
		Hostnames:       []string{"localhost", "127.0.0.1"},
		DatabaseURL:     extra.DatabaseURL,
		NATSURL:         extra.NATSURL,
		TLSLegacySuites: extra.TLSLegacySuites,
		Logger:          slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	})
	if err != nil {
		t.Fatalf("hub.Open: %v", err)
	}
	admin, err := client.New(h.HTTPURL(), h.AdminKey(), nil)
	if err != nil {
		t.Fatal(err)
	}
	th := &testHub{Hub: h, dir: dir, admin: admin}
	t.Cleanup(th.stop)
	return th
}

// stop closes the hub once; later calls do nothing.
func (th *testHub) stop() {
	th.once.Do(func() { th.Hub.Close() })
}

// as returns a client of th's HTTP API with key.
func (th *testHub) as(t testing.TB, key string) *client.Client {
	c, err := client.New(th.HTTPURL(), key, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// do sends a request and fails the test unless it answers wantStatus.
func do(t testing.TB, c *client.Client, method, path string, body, out any, wantStatus int) {
	t.Helper()
	got, err := c.Send(context.Background(), method, path, body, out)
	if got != wantStatus {
		t.Fatalf("%s %s: status %d (%v), want %d", method, path, got, err, wantStatus)
	}
}

// needTool skips when a Debian tool is missing; .ci/run installs them all.
func needTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed, and CI must install it", name)
		}
		t.Skipf("%s is not installed", name)
	}
	return p
}

// trustingClient is an HTTPS client that trusts only the hub's CA chain.
func (th *testHub) trustingClient(t testing.TB) *http.Client {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(th.ChainPEM()) {
		t.Fatal("hub chain has no certificate")
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
}

// get fetches a public path over plain HTTP.
func (th *testHub) get(t testing.TB, path string) []byte {
	t.Helper()
	resp, err := http.Get(th.HTTPURL() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return b
}
