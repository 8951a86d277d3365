package edge

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/iothub/iothub/sign"
)

// Issued is a certificate the hub issued to the device.
type Issued struct {
	Serial    string    `json:"serial"`
	Cert      string    `json:"cert"`
	CAChain   string    `json:"caChain"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
}

// HubError is an error answer of the hub's device HTTP API.
type HubError struct {
	Status  int    // HTTP status
	Code    string // error.code
	Message string // error.message
}

func (e *HubError) Error() string {
	return fmt.Sprintf("hub answered %d %s: %s", e.Status, e.Code, e.Message)
}

// Refused reports whether the hub refused the request for good (4xx other
// than 408/429), as opposed to a failure worth retrying.
func (e *HubError) Refused() bool {
	return e.Status >= 400 && e.Status < 500 && e.Status != http.StatusRequestTimeout && e.Status != http.StatusTooManyRequests
}

// DeviceClient calls the hub's device-authenticated HTTPS endpoints
// (/device/v1/…) signing each request with the DeviceSecret.
type DeviceClient struct {
	API          string // https://host:port
	ProductKey   string
	DeviceKey    string
	DeviceSecret string
	HTTP         *http.Client
	Now          func() time.Time
}

// NewHTTPClient returns an HTTP client that accepts only TLS 1.2+ servers
// whose certificate chains to roots (the pinned CA).
func NewHTTPClient(roots *x509.CertPool) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout: 10 * time.Second,
			Proxy:               http.ProxyFromEnvironment,
		},
	}
}

func (c *DeviceClient) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *DeviceClient) endpoint(parts ...string) (string, error) {
	u, err := url.Parse(c.API)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("edge: bad API URL %q", c.API)
	}
	if u.Scheme != "https" {
		return "", fmt.Errorf("edge: API URL %q must use https: the DeviceSecret-signed request and the certificate travel over it", c.API)
	}
	segs := []string{"device", "v1", c.ProductKey, c.DeviceKey}
	for _, p := range append(segs, parts...) {
		u = u.JoinPath(url.PathEscape(p))
	}
	return u.String(), nil
}

// Enroll submits csrPEM and returns the issued certificate.
func (c *DeviceClient) Enroll(ctx context.Context, csrPEM string) (*Issued, error) {
	ts := strconv.FormatInt(c.now().UnixMilli(), 10)
	sum := sha256.Sum256([]byte(csrPEM))
	sig, err := sign.Compute(sign.SHA256, []sign.Pair{
		{Key: "csrSha256", Value: hex.EncodeToString(sum[:])},
		{Key: "deviceKey", Value: c.DeviceKey},
		{Key: "productKey", Value: c.ProductKey},
		{Key: "timestamp", Value: ts},
	}, c.DeviceSecret)
	if err != nil {
		return nil, err
	}
	u, err := c.endpoint("certificates")
	if err != nil {
		return nil, err
	}
	var out Issued
	body := map[string]string{"csr": csrPEM, "timestamp": ts, "signMethod": string(sign.SHA256), "sign": sig}
	if err := c.post(ctx, u, body, http.StatusCreated, &out); err != nil {
		return nil, fmt.Errorf("edge: enroll: %w", err)
	}
	if out.Cert == "" || out.Serial == "" {
		return nil, fmt.Errorf("edge: enroll: the hub's answer has no certificate")
	}
	return &out, nil
}

// Revoke asks the hub to revoke the device's own certificate serial.
func (c *DeviceClient) Revoke(ctx context.Context, serial string) error {
	ts := strconv.FormatInt(c.now().UnixMilli(), 10)
	sig, err := sign.Compute(sign.SHA256, []sign.Pair{
		{Key: "deviceKey", Value: c.DeviceKey},
		{Key: "productKey", Value: c.ProductKey},
		{Key: "serial", Value: serial},
		{Key: "timestamp", Value: ts},
	}, c.DeviceSecret)
	if err != nil {
		return err
	}
	u, err := c.endpoint("certificates", serial, "revoke")
	if err != nil {
		return err
	}
	body := map[string]string{"timestamp": ts, "signMethod": string(sign.SHA256), "sign": sig}
	if err := c.post(ctx, u, body, http.StatusOK, nil); err != nil {
		return fmt.Errorf("edge: revoke certificate %s: %w", serial, err)
	}
	return nil
}

func (c *DeviceClient) post(ctx context.Context, u string, body any, want int, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	hc := c.HTTP
	if hc == nil {
		return fmt.Errorf("edge: no HTTP client (the pinned CA must be set)")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != want && !(resp.StatusCode >= 200 && resp.StatusCode < 300) {
		he := &HubError{Status: resp.StatusCode}
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error.Code != "" {
			he.Code, he.Message = e.Error.Code, e.Error.Message
		} else {
			he.Message = strings.TrimSpace(string(data))
			if len(he.Message) > 200 {
				he.Message = he.Message[:200]
			}
		}
		return he
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("hub answer: %w", err)
		}
	}
	return nil
}
