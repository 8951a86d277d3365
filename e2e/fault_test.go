package e2e

import (
	"crypto/x509"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/changes"
	"github.com/iothub/iothub/nats/natstest"
	"github.com/iothub/iothub/postgres/pgtest"
	"github.com/iothub/iothub/sign"
)

// faultTrials is how many times a fault test repeats its fault:
// IOTHUB_FAULT_TRIALS, or def for the normal suite.
func faultTrials(t *testing.T, def int) int {
	v := os.Getenv("IOTHUB_FAULT_TRIALS")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("IOTHUB_FAULT_TRIALS=%q: want a positive number", v)
	}
	return n
}

// busOutage is how long NATS stays down in each trial.
const busOutage = 10 * time.Second

// applyBound is the promise: with the bus down, a node applies a
// revocation or disable made on another node within this long.
const applyBound = 5 * time.Second

// crlLists reports whether the node's CRL lists serial (hex).
func crlLists(t *testing.T, th *testHub, serial string) bool {
	t.Helper()
	res, err := http.Get(th.HTTPURL() + "/crl")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	der, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatalf("node's CRL: %v", err)
	}
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Text(16) == serial {
			return true
		}
	}
	return false
}

// TestRevocationSurvivesBusOutage stops NATS under two nodes, revokes a
// certificate and disables a device through node B meanwhile, and checks
// that node A closes both devices' sessions, refuses a fresh login with
// the revoked certificate and lists it in its CRL within applyBound of the
// API calls: the nodes
// catch up from the database, not from the bus. IOTHUB_FAULT_TRIALS=20
// runs the twenty trials.
func TestRevocationSurvivesBusOutage(t *testing.T) {
	trials := faultTrials(t, 2)
	dbURL := pgtest.Standalone(t)
	ns := natstest.Serve(t)
	a := startNode(t, t.TempDir(), dbURL, ns.URL)
	b := startNode(t, joinCluster(t, a.dir), dbURL, ns.URL)
	certProduct := a.newProduct(t, map[string]any{"name": "gateways", "authMode": "certificate"})
	secretProduct := a.newProduct(t, map[string]any{"name": "meters"})

	var delays []time.Duration
	for trial := range trials {
		// A certificate device and a secret device, both on node A.
		cd := a.newDevice(t, certProduct, "GW-"+strconv.Itoa(trial))
		key, csr := newKeyAndCSR(t, cd.DeviceKey)
		var c issued
		do(t, a.admin, "POST", "/api/v1/products/"+certProduct.ProductKey+"/devices/"+cd.DeviceKey+"/certificates", map[string]any{"csr": csr}, &c, 201)
		cert := tlsCert(t, c.Cert, key)
		certLogin := func() *paho.ClientOptions {
			o := deviceOptions("ssl://"+a.MQTTSAddr(), certProduct.ProductKey, cd.DeviceKey, cd.DeviceSecret, sign.ModeStatic)
			o.SetTLSConfig(a.tlsTo(t, cert))
			return o
		}
		sd := a.newDevice(t, secretProduct, "M-"+strconv.Itoa(trial))
		lost := make(chan time.Time, 2)
		onLost := func(paho.Client, error) { lost <- time.Now() }
		o := certLogin()
		o.SetConnectionLostHandler(onLost)
		connect(t, o)
		o = deviceOptions("tcp://"+a.MQTTAddr(), secretProduct.ProductKey, sd.DeviceKey, sd.DeviceSecret, sign.ModeStatic)
		o.SetConnectionLostHandler(onLost)
		connect(t, o)
		a.waitState(t, certProduct.ProductKey, cd.DeviceKey, iothub.StateOnline)
		a.waitState(t, secretProduct.ProductKey, sd.DeviceKey, iothub.StateOnline)

		ns.Stop()
		down := time.Now()
		// Both nodes have lost the bus; the calls land at a random point
		// of node A's read period.
		time.Sleep(500*time.Millisecond + rand.N(changes.DefaultEvery))
		start := time.Now()
		do(t, b.admin, "POST", "/api/v1/certificates/"+c.Serial+"/revoke", map[string]any{"reason": "keyCompromise"}, nil, 200)
		do(t, b.admin, "POST", "/api/v1/products/"+secretProduct.ProductKey+"/devices/"+sd.DeviceKey+"/disable", nil, nil, 200)

		var closed []time.Time
		deadline := time.After(applyBound)
		for len(closed) < 2 {
			select {
			case at := <-lost:
				closed = append(closed, at)
			case <-deadline:
				t.Fatalf("trial %d: node A closed %d of 2 sessions within %v of the calls on node B", trial, len(closed), applyBound)
			}
		}
		var refusedAt time.Time
		for refusedAt.IsZero() {
			if time.Since(start) > applyBound {
				t.Fatalf("trial %d: node A still lets the revoked certificate log in %v after the revocation on B", trial, time.Since(start))
			}
			if refused(certLogin()) != nil {
				refusedAt = time.Now()
			} else {
				time.Sleep(100 * time.Millisecond)
			}
		}
		var listedAt time.Time
		for listedAt.IsZero() {
			if time.Since(start) > applyBound {
				t.Fatalf("trial %d: node A's CRL does not list the certificate revoked on B %v later", trial, time.Since(start))
			}
			if crlLists(t, a, c.Serial) {
				listedAt = time.Now()
			} else {
				time.Sleep(50 * time.Millisecond)
			}
		}
		delay := max(closed[0].Sub(start), closed[1].Sub(start), refusedAt.Sub(start), listedAt.Sub(start))
		delays = append(delays, delay)
		t.Logf("trial %d: sessions closed after %v and %v, fresh login refused after %v, CRL lists it after %v", trial,
			closed[0].Sub(start).Round(time.Millisecond), closed[1].Sub(start).Round(time.Millisecond),
			refusedAt.Sub(start).Round(time.Millisecond), listedAt.Sub(start).Round(time.Millisecond))

		time.Sleep(time.Until(down.Add(busOutage)))
		if err := ns.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	// Node A counts what it had to take from the log.
	res, err := http.Get(a.HTTPURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(res.Body)
	res.Body.Close()
	var fromLog float64
	for _, line := range strings.Split(string(metrics), "\n") {
		if v, ok := strings.CutPrefix(line, "iothub_changes_from_log_total "); ok {
			fromLog, _ = strconv.ParseFloat(v, 64)
		}
	}
	if fromLog < float64(2*trials) {
		t.Fatalf("node A counted %v events from the change log, want at least %d", fromLog, 2*trials)
	}
	slices.Sort(delays)
	t.Logf("%d trials, 0 misses; delay from the API calls on B to node A applying all: min %v, median %v, p90 %v, max %v",
		len(delays), delays[0].Round(time.Millisecond), delays[len(delays)/2].Round(time.Millisecond),
		delays[len(delays)*9/10].Round(time.Millisecond), delays[len(delays)-1].Round(time.Millisecond))
}
