package http

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/inmem"
	"github.com/iothub/iothub/pki"
	"github.com/iothub/iothub/sign"
	"github.com/iothub/iothub/sqlite/sqlitetest"
)

// deviceAPIHarness is a real HTTP server (SQLite store, CA, certificate
// service) with one certificate-mode device whose secret and clock are
// fixed, so that seeds can carry valid signatures.
type deviceAPIHarness struct {
	srv    *Server
	dev    *iothub.Device
	now    time.Time
	serial string // a certificate of dev, for the revoke seeds
}

func newDeviceAPIHarness(t testing.TB) *deviceAPIHarness {
	t.Helper()
	dir := t.TempDir()
	db := sqlitetest.Open(t, dir)
	auth, err := pki.OpenAuthority(filepath.Join(dir, "ca"), pki.AuthorityOptions{Hostnames: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.DiscardHandler)
	certs, err := pki.NewService(auth, db, inmem.NewBus(), logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { certs.Close() })
	ctx := context.Background()
	p := &iothub.Product{OrgID: iothub.DefaultOrgID, ProductKey: "pkfz", ProductSecret: "product-secret", Name: "fuzz", AuthMode: iothub.AuthCertificate}
	if err := db.CreateProduct(ctx, p); err != nil {
		t.Fatal(err)
	}
	d, err := iothub.NewDevice(p, "dev", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	d.DeviceSecret = "device-secret-0123456789abcdefgh"
	if err := db.CreateDevice(ctx, d); err != nil {
		t.Fatal(err)
	}
	c, err := certs.Enroll(ctx, p, d, fuzzCSR(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	now := time.UnixMilli(time.Now().UnixMilli())
	srv := NewServer(Config{Store: db, Certs: certs, Logger: logger, Now: func() time.Time { return now }})
	return &deviceAPIHarness{srv: srv, dev: d, now: now, serial: c.Serial}
}

// fuzzCSR returns a fresh P-256 CSR in PEM.
func fuzzCSR(t testing.TB) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// signed returns a body signed with the device's secret over pairs.
func (h *deviceAPIHarness) signed(t testing.TB, fields map[string]any, pairs ...sign.Pair) []byte {
	t.Helper()
	ts := strconv.FormatInt(h.now.UnixMilli(), 10)
	pairs = append(pairs, sign.Pair{Key: "deviceKey", Value: h.dev.DeviceKey}, sign.Pair{Key: "productKey", Value: h.dev.ProductKey},
		sign.Pair{Key: "timestamp", Value: ts})
	sig, err := sign.Compute(sign.SHA256, pairs, h.dev.DeviceSecret)
	if err != nil {
		t.Fatal(err)
	}
	body := map[string]any{"timestamp": ts, "signMethod": "sha256", "sign": sig}
	for k, v := range fields {
		body[k] = v
	}
	b, _ := json.Marshal(body)
	return b
}

// FuzzDeviceAPIBody posts arbitrary bodies to the device enrollment and
// revocation routes: no input panics or gets a 5xx, every answer is JSON,
// and nothing succeeds without a valid signature by the device's secret.
func FuzzDeviceAPIBody(f *testing.F) {
	h := newDeviceAPIHarness(f)
	csr := fuzzCSR(f)
	f.Add(uint8(0), h.signed(f, map[string]any{"csr": csr}, sign.Pair{Key: "csrSha256", Value: CSRDigest(csr)}))
	f.Add(uint8(0), h.signed(f, map[string]any{"csr": csr, "validDays": 30}, sign.Pair{Key: "csrSha256", Value: CSRDigest(csr)}))
	f.Add(uint8(1), h.signed(f, nil, sign.Pair{Key: "serial", Value: h.serial}))
	for _, s := range []string{
		`{"timestamp":1,"signMethod":"sha256","sign":"00","csr":"x"}`,
		`{"timestamp":"9999999999999999999999","sign":""}`,
		`{"timestamp":-1,"signMethod":"md5"}`,
		`{"csr":"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"}`,
		`{"unknown":1}`, `{}`, `[]`, `null`, ``, `{"timestamp":{}}`, `{"validDays":1e309}`, `{} {}`,
	} {
		f.Add(uint8(0), []byte(s))
		f.Add(uint8(1), []byte(s))
	}
	var source atomic.Uint32
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		path := "/device/v1/pkfz/dev/certificates"
		pairKey, pairValue := "csrSha256", ""
		if route%2 == 1 {
			path += "/" + h.serial + "/revoke"
			pairKey, pairValue = "serial", h.serial
		}
		req := httptest.NewRequest("POST", path, bytes.NewReader(body))
		// A new source address per input, so the failed-request throttle
		// does not end the exploration at the first few inputs.
		n := source.Add(1)
		req.RemoteAddr = fmt.Sprintf("10.%d.%d.%d:4000", byte(n>>16), byte(n>>8), byte(n))
		rec := httptest.NewRecorder()
		h.srv.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("answer is not JSON: %q", rec.Body)
		}
		if rec.Code >= 300 {
			return
		}
		var sent struct {
			Timestamp json.RawMessage `json:"timestamp"`
			Sign      string          `json:"sign"`
			CSR       string          `json:"csr"`
		}
		if err := json.Unmarshal(body, &sent); err != nil {
			t.Fatalf("status %d for a body that is not JSON: %q", rec.Code, body)
		}
		if pairKey == "csrSha256" {
			pairValue = CSRDigest(sent.CSR)
		}
		ts, _ := strconv.Unquote(string(sent.Timestamp))
		if ts == "" {
			ts = string(sent.Timestamp)
		}
		pairs := []sign.Pair{{Key: pairKey, Value: pairValue}, {Key: "deviceKey", Value: "dev"}, {Key: "productKey", Value: "pkfz"}, {Key: "timestamp", Value: ts}}
		if !sign.Verify(sign.SHA256, pairs, h.dev.DeviceSecret, sent.Sign) {
			t.Fatalf("status %d without a valid signature: %q", rec.Code, body)
		}
	})
}
