// Package client calls the hub's management API. The CLI, the bench tool
// and the end-to-end tests use it.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/iothub/iothub"
)

// Client talks to one hub with one API key.
type Client struct {
	BaseURL string
	APIKey  string
	HTTP    *http.Client
}

// New returns a client for baseURL. caPEM, when not empty, is the only
// trusted root for an https baseURL.
func New(baseURL, apiKey string, caPEM []byte) (*Client, error) {
	tr := &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: 64}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("client: no certificate in the CA file")
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), APIKey: apiKey, HTTP: &http.Client{Transport: tr, Timeout: 90 * time.Second}}, nil
}

// StatusError is an API error with its HTTP status.
type StatusError struct {
	Status  int
	Code    string
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
}

// Do sends body (JSON-encoded unless nil) and decodes the answer into out
// (unless nil). A non-2xx answer is a *StatusError.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	_, err := c.Send(ctx, method, path, body, out)
	return err
}

// Send is Do that also returns the HTTP status.
func (c *Client) Send(ctx context.Context, method, path string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, rd)
	if err != nil {
		return 0, err
	}
	if c.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.APIKey)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, statusError(resp.StatusCode, data)
	}
	if out == nil || len(data) == 0 {
		return resp.StatusCode, nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = append((*raw)[:0], data...)
		return resp.StatusCode, nil
	}
	return resp.StatusCode, json.Unmarshal(data, out)
}

// statusError reads an error answer of the API.
func statusError(status int, data []byte) *StatusError {
	var e struct {
		Error struct{ Code, Message string }
	}
	json.Unmarshal(data, &e)
	if e.Error.Code == "" {
		e.Error.Code, e.Error.Message = "http_error", strings.TrimSpace(string(data))
	}
	return &StatusError{Status: status, Code: e.Error.Code, Message: e.Error.Message}
}

// CreateProduct creates a product and returns it with its secret.
func (c *Client) CreateProduct(ctx context.Context, req map[string]any) (*iothub.Product, error) {
	var p iothub.Product
	return &p, c.Do(ctx, "POST", "/api/v1/products", req, &p)
}

// CreateDevice registers deviceKey ("" for a generated one) under productKey.
func (c *Client) CreateDevice(ctx context.Context, productKey, deviceKey string) (*iothub.Device, error) {
	var d iothub.Device
	body := map[string]any{}
	if deviceKey != "" {
		body["deviceKey"] = deviceKey
	}
	return &d, c.Do(ctx, "POST", "/api/v1/products/"+productKey+"/devices", body, &d)
}

// Device reads one device.
func (c *Client) Device(ctx context.Context, productKey, deviceKey string) (*iothub.Device, error) {
	var d iothub.Device
	return &d, c.Do(ctx, "GET", "/api/v1/products/"+productKey+"/devices/"+deviceKey, nil, &d)
}
