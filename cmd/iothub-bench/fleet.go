package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/client"
)

// device is one simulated device: its keys, its secret and, for the
// certificate product, its certificate files.
type device struct {
	PK       string `json:"pk"`
	DK       string `json:"dk"`
	Secret   string `json:"secret"`
	CertFile string `json:"cert,omitempty"`
	KeyFile  string `json:"key,omitempty"`

	once sync.Once
	cert tls.Certificate
	err  error
}

// tlsCert loads the device's certificate and key once.
func (d *device) tlsCert() (tls.Certificate, error) {
	d.once.Do(func() { d.cert, d.err = tls.LoadX509KeyPair(d.CertFile, d.KeyFile) })
	return d.cert, d.err
}

// prefix is the device's own topic prefix, the same on both brokers.
func (d *device) prefix() string { return "/sys/" + d.PK + "/" + d.DK + "/" }

// fleet is the provisioned device set, written by `provision` and read by
// every scenario. Secret devices log in with their secret (tcp, tls);
// Cert devices belong to a certificate product and log in with mutual TLS.
type fleet struct {
	CAFile string    `json:"caFile"`
	App    string    `json:"appPassword"` // password of the "app" MQTT user (Mosquitto's call scenario)
	Secret []*device `json:"secret"`
	Cert   []*device `json:"cert"`
	caPool *x509.CertPool
}

func loadFleet(path string) (*fleet, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f fleet
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ca, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, err
	}
	f.caPool = x509.NewCertPool()
	if !f.caPool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s: no certificate", f.CAFile)
	}
	return &f, nil
}

// pick returns the first n devices for a transport: certificate devices
// for mtls, secret devices otherwise.
func (f *fleet) pick(transport string, n int) ([]*device, error) {
	all := f.Secret
	if transport == "mtls" {
		all = f.Cert
	}
	if n > len(all) {
		return nil, fmt.Errorf("the fleet has %d devices for %s, %d asked: provision more", len(all), transport, n)
	}
	return all[:n], nil
}

// provisionConfig is what `provision` creates.
type provisionConfig struct {
	API, KeyFile, Out string
	Secret, Cert      int
	Concurrency       int
}

// provision creates a secret product with cfg.Secret devices and a
// certificate product with cfg.Cert devices on the hub, each certificate
// device with a P-256 key and a certificate issued from its CSR, and
// writes the fleet file, the CA chain and the key files under cfg.Out.
func provision(ctx context.Context, cfg provisionConfig) error {
	key, err := os.ReadFile(cfg.KeyFile)
	if err != nil {
		return err
	}
	c, err := client.New(cfg.API, strings.TrimSpace(string(key)), nil)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(cfg.Out, "certs"), 0o700); err != nil {
		return err
	}
	ca, err := fetch(ctx, c, "/ca.pem")
	if err != nil {
		return fmt.Errorf("GET /ca.pem: %w", err)
	}
	f := fleet{CAFile: filepath.Join(cfg.Out, "ca.pem"), App: iothub.RandomString(24)}
	if err := os.WriteFile(f.CAFile, ca, 0o644); err != nil {
		return err
	}
	sp, err := c.CreateProduct(ctx, map[string]any{"name": "bench-secret", "authMode": "secret"})
	if err != nil {
		return fmt.Errorf("create product: %w", err)
	}
	cp, err := c.CreateProduct(ctx, map[string]any{"name": "bench-cert", "authMode": "certificate"})
	if err != nil {
		return fmt.Errorf("create product: %w", err)
	}
	f.Secret = make([]*device, cfg.Secret)
	f.Cert = make([]*device, cfg.Cert)
	type job struct {
		d    **device
		pk   string
		dk   string
		cert bool
	}
	jobs := make(chan job)
	var failed atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for w := 0; w < max(cfg.Concurrency, 1); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				d, err := createDevice(ctx, c, cfg.Out, j.pk, j.dk, j.cert)
				if err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				*j.d = d
			}
		}()
	}
	for i := range f.Secret {
		jobs <- job{&f.Secret[i], sp.ProductKey, fmt.Sprintf("s%06d", i), false}
	}
	for i := range f.Cert {
		jobs <- job{&f.Cert[i], cp.ProductKey, fmt.Sprintf("c%06d", i), true}
	}
	close(jobs)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d devices failed; first: %w", n, firstErr)
	}
	b, err := json.MarshalIndent(f, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(cfg.Out, "fleet.json"), b, 0o600)
}

func createDevice(ctx context.Context, c *client.Client, out, pk, dk string, withCert bool) (*device, error) {
	dv, err := c.CreateDevice(ctx, pk, dk)
	if err != nil {
		return nil, fmt.Errorf("create device %s: %w", dk, err)
	}
	d := &device{PK: pk, DK: dk, Secret: dv.DeviceSecret}
	if !withCert {
		return d, nil
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: dk}}, k)
	if err != nil {
		return nil, err
	}
	var issued struct {
		Cert    string `json:"cert"`
		CAChain string `json:"caChain"`
	}
	body := map[string]any{"csr": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})), "validDays": 30}
	if err := c.Do(ctx, "POST", "/api/v1/products/"+pk+"/devices/"+dk+"/certificates", body, &issued); err != nil {
		return nil, fmt.Errorf("certificate for %s: %w", dk, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	d.CertFile = filepath.Join(out, "certs", dk+".pem")
	d.KeyFile = filepath.Join(out, "certs", dk+".key")
	if err := os.WriteFile(d.CertFile, []byte(issued.Cert), 0o644); err != nil {
		return nil, err
	}
	return d, os.WriteFile(d.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// fetch GETs a public, non-JSON path.
func fetch(ctx context.Context, c *client.Client, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.BaseURL+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, errors.New(resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}

// writePasswords writes Mosquitto's plain password file (to be hashed by
// `mosquitto_passwd -U`): every secret device as user deviceKey with its
// secret as password, and the "app" user.
func writePasswords(w io.Writer, f *fleet) error {
	if _, err := fmt.Fprintf(w, "app:%s\n", f.App); err != nil {
		return err
	}
	for _, d := range f.Secret {
		if _, err := fmt.Fprintf(w, "%s:%s\n", d.DK, d.Secret); err != nil {
			return err
		}
	}
	return nil
}
