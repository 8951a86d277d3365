package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"
)

// Auth modes of a product as the agent sees them.
const (
	AuthCertificate = "certificate" // mutual TLS with an enrolled certificate, then a mode-2 login
	AuthSecret      = "secret"      // a mode-2 login only (over TLS if the broker URL says ssl://)
)

// Handler answers a downstream service call. It returns the reply's data;
// an error becomes a reply with the error's code (see ServiceError) or 500.
type Handler func(ctx context.Context, params json.RawMessage) (any, error)

// ServiceError is an error a Handler returns to choose the reply code.
type ServiceError struct {
	Code    int
	Message string
}

func (e *ServiceError) Error() string { return fmt.Sprintf("code %d: %s", e.Code, e.Message) }

// Config is what an Agent needs. The zero values of the optional fields
// pick the defaults noted on each.
type Config struct {
	StateDir      string // required: where the agent keeps what it learns (mode 0700)
	CAFile        string // pinned CA bundle that the hub's certificates must chain to
	Broker        string // ssl://host:port (TLS) or tcp://host:port
	API           string // https://host:port, for certificate enrollment and revocation
	ProductKey    string // required
	ProductSecret string // factory secret for dynamic activation; unused once the DeviceSecret is stored
	DeviceKey     string // required: the serial number
	// DeviceSecret may be given instead of dynamic activation (static provisioning).
	DeviceSecret string
	// Auth is AuthCertificate or AuthSecret; default certificate when a CA
	// file is given and the broker uses TLS, else secret.
	Auth     string
	Interval time.Duration // measurepoint period; default 5s
	KeyType  KeyType       // default rsa2048 (the seeds' choice)
	// KeyStore holds the device key; default a FileKeyStore in StateDir
	// sealed with Passphrase if one is set.
	KeyStore   KeyStore
	Passphrase []byte
	// Metrics returns the measurepoints of one post; default SystemMetrics.
	Metrics func(ctx context.Context) (map[string]any, error)
	// Services adds or overrides service handlers by service id.
	Services map[string]Handler
	// ServiceCommand, when set, answers service calls without a handler: it
	// is run with the service id as last argument, the params JSON on
	// stdin, and must print the reply data as JSON.
	ServiceCommand []string
	// OnSet is called with the params of a measurepoint set; default: the
	// values are kept and merged into later posts.
	OnSet func(ctx context.Context, points map[string]any) error
	// BufferBytes bounds the offline buffer; default DefaultBufferBytes.
	BufferBytes int64
	// TrustRefresh is how often the trust bundle and CRLs are refreshed
	// from the API (also at start); default DefaultTrustRefresh, negative: never.
	TrustRefresh time.Duration
	// RenewFraction of a certificate's life after which it is renewed; default 2/3.
	RenewFraction float64
	// RequestTimeout bounds the wait for the hub's reply to a request
	// (certificate renewal) and for the activation info; default 30s.
	RequestTimeout time.Duration
	BackoffMin     time.Duration // default 1s
	BackoffMax     time.Duration // default 2m
	Logger         *slog.Logger  // default slog.Default()
	// OnState is told of each state change ("activated", "enrolled",
	// "online", "offline", "renewed", "stopped").
	OnState func(state string)
}

// brokerURL checks and normalises the broker URL; tls reports ssl://.
func brokerURL(s string) (u string, tls bool, err error) {
	p, err := url.Parse(s)
	if err != nil || p.Host == "" || p.Port() == "" {
		return "", false, fmt.Errorf("edge: broker %q must look like ssl://host:port or tcp://host:port", s)
	}
	switch strings.ToLower(p.Scheme) {
	case "ssl", "tls", "mqtts":
		return "ssl://" + p.Host, true, nil
	case "tcp", "mqtt":
		return "tcp://" + p.Host, false, nil
	}
	return "", false, fmt.Errorf("edge: broker scheme %q: use ssl:// or tcp://", p.Scheme)
}

// check validates c and fills in defaults. It changes nothing on error.
func (c Config) check() (Config, error) {
	var errs []error
	if c.StateDir == "" {
		errs = append(errs, errors.New("a state directory is required"))
	}
	if c.ProductKey == "" || c.DeviceKey == "" {
		errs = append(errs, errors.New("product key and device key are required"))
	}
	for _, v := range []string{c.ProductKey, c.DeviceKey} {
		if strings.ContainsAny(v, "/+#&|") {
			errs = append(errs, fmt.Errorf("key %q contains one of / + # & |", v))
		}
	}
	_, isTLS, err := brokerURL(c.Broker)
	if err != nil {
		errs = append(errs, err)
	}
	if c.Auth == "" {
		c.Auth = AuthSecret
		if c.CAFile != "" && isTLS {
			c.Auth = AuthCertificate
		}
	}
	switch c.Auth {
	case AuthCertificate:
		if !isTLS {
			errs = append(errs, errors.New("certificate auth needs an ssl:// broker"))
		}
		if c.CAFile == "" {
			errs = append(errs, errors.New("certificate auth needs the pinned CA file"))
		}
		if !strings.HasPrefix(c.API, "https://") {
			errs = append(errs, errors.New("certificate auth needs the hub's https:// API URL for enrollment"))
		}
	case AuthSecret:
	default:
		errs = append(errs, fmt.Errorf("auth %q: use certificate or secret", c.Auth))
	}
	if isTLS && c.CAFile == "" {
		errs = append(errs, errors.New("an ssl:// broker needs the pinned CA file to verify the hub"))
	}
	if c.Interval == 0 {
		c.Interval = 5 * time.Second
	}
	if c.Interval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("interval %v is too short", c.Interval))
	}
	if c.KeyType == "" {
		c.KeyType = RSA2048
	}
	if !c.KeyType.Valid() {
		errs = append(errs, fmt.Errorf("key type %q: use rsa2048 or p256", c.KeyType))
	}
	if c.RenewFraction == 0 {
		c.RenewFraction = 2.0 / 3
	}
	if c.RenewFraction <= 0 || c.RenewFraction >= 1 {
		errs = append(errs, fmt.Errorf("renew fraction %v must be in (0, 1)", c.RenewFraction))
	}
	if c.TrustRefresh == 0 {
		c.TrustRefresh = DefaultTrustRefresh
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 30 * time.Second
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = time.Second
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = 2 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if len(errs) > 0 {
		return Config{}, fmt.Errorf("edge: bad config: %w", errors.Join(errs...))
	}
	return c, nil
}
