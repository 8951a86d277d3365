// Package http serves the management API (/api/v1, guarded by API keys),
// the device enrollment endpoints (/device/v1, signed with the device
// secret) and the public CA, CRL, OCSP, health and metrics endpoints.
package http

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/manage"
	"golang.org/x/time/rate"
)

// MaxBodyBytes caps every request body.
const MaxBodyBytes = 1 << 20

// Config wires a Server to the rest of the hub.
type Config struct {
	Store   iothub.Store
	Certs   iothub.CertificateService
	Gateway iothub.DeviceGateway
	Bus     iothub.Bus
	// Manage carries out management operations; nil builds one from
	// Store, Certs and Bus.
	Manage *manage.Service
	// Metrics serves /metrics; nil leaves the route out.
	Metrics http.Handler
	Logger  *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server is the hub's HTTP handler.
type Server struct {
	Config
	mux     *http.ServeMux
	routes  []route
	limitMu sync.Mutex
	limits  map[string]*rate.Limiter // failed auth per source address and device
	// ocspLimit paces OCSP requests per source address (F10): each answer
	// not in the cache costs a signature.
	ocspLimit *perAddress
}

// OCSP requests allowed per source address: a burst, then a steady rate.
const (
	OCSPBurst     = 50
	OCSPPerSecond = 20
)

// perAddress is a token bucket per source address, its memory bounded.
type perAddress struct {
	mu     sync.Mutex
	m      map[string]*rate.Limiter
	every  rate.Limit
	burst  int
	maxLen int
}

func newPerAddress(every rate.Limit, burst int) *perAddress {
	return &perAddress{m: map[string]*rate.Limiter{}, every: every, burst: burst, maxLen: 100000}
}

// allow spends one token of addr's bucket and reports whether there was one.
func (p *perAddress) allow(addr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.m[addr]
	if !ok {
		if len(p.m) >= p.maxLen {
			clear(p.m) // bounded memory under a flood of sources
		}
		l = rate.NewLimiter(p.every, p.burst)
		p.m[addr] = l
	}
	return l.Allow()
}

// route is one registered endpoint; the list is also what the OpenAPI test checks.
type route struct {
	method, path string
}

// NewServer builds the handler with every route registered.
func NewServer(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Manage == nil {
		cfg.Manage = manage.New(manage.Config{Store: cfg.Store, Certs: cfg.Certs, Bus: cfg.Bus, Logger: cfg.Logger, Now: cfg.Now})
	}
	s := &Server{Config: cfg, mux: http.NewServeMux(), limits: map[string]*rate.Limiter{},
		ocspLimit: newPerAddress(OCSPPerSecond, OCSPBurst)}
	s.registerPublic()
	s.registerIAM()
	s.registerAuthority()
	s.registerProducts()
	s.registerDevices()
	s.registerTopology()
	s.registerCertificates()
	s.registerDeviceAPI()
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	s.mux.ServeHTTP(w, r)
}

// Routes lists "METHOD /path" of every API route, for the OpenAPI check.
func (s *Server) Routes() []string {
	out := make([]string, 0, len(s.routes))
	for _, rt := range s.routes {
		out = append(out, rt.method+" "+rt.path)
	}
	return out
}

// handle registers a public handler.
func (s *Server) handle(method, path string, h http.HandlerFunc) {
	s.routes = append(s.routes, route{method, path})
	s.mux.HandleFunc(method+" "+path, h)
}

// apiHandler is a management handler that runs with an authenticated caller.
type apiHandler func(w http.ResponseWriter, r *http.Request, p iothub.Principal) error

// api registers a management route that needs role at least need.
func (s *Server) api(method, path string, need iothub.Role, h apiHandler) {
	s.handle(method, path, func(w http.ResponseWriter, r *http.Request) {
		p, err := s.authenticate(r)
		if err == nil && !p.Role.Allows(need) {
			err = iothub.Errorf(iothub.EFORBIDDEN, "role %s may not do this (needs %s)", p.Role, need)
		}
		if err == nil {
			err = h(w, r, p)
		}
		if err != nil {
			s.writeError(w, r, err)
		}
	})
}

// authenticate resolves the bearer API key to a principal.
func (s *Server) authenticate(r *http.Request) (iothub.Principal, error) {
	ip := remoteIP(r)
	if !s.allow("auth:"+ip, false) {
		return iothub.Principal{}, iothub.Errorf(iothub.ETOOMANY, "too many failed authentications; retry later")
	}
	raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || raw == "" {
		return iothub.Principal{}, iothub.Errorf(iothub.EUNAUTHORIZED, "missing bearer API key")
	}
	k, err := s.Store.APIKeyByHash(r.Context(), HashAPIKey(strings.TrimSpace(raw)))
	if iothub.ErrorCode(err) == iothub.ENOTFOUND {
		s.allow("auth:"+ip, true)
		return iothub.Principal{}, iothub.Errorf(iothub.EUNAUTHORIZED, "unknown or revoked API key")
	} else if err != nil {
		return iothub.Principal{}, err
	}
	return iothub.Principal{KeyID: k.ID, OrgID: k.OrgID, Role: k.Role, Bootstrap: k.Bootstrap}, nil
}

// allow consults the failure limiter for key. With spend it records one
// failure; without, it only tells whether failures are still allowed.
// Ten failures in a burst, then one every six seconds.
func (s *Server) allow(key string, spend bool) bool {
	s.limitMu.Lock()
	defer s.limitMu.Unlock()
	l, ok := s.limits[key]
	if !ok {
		if !spend {
			return true
		}
		if len(s.limits) > 100000 {
			clear(s.limits) // bounded memory under a flood of sources
		}
		l = rate.NewLimiter(rate.Every(6*time.Second), 10)
		s.limits[key] = l
	}
	if spend {
		return l.Allow()
	}
	return l.Tokens() >= 1
}

// actor is the caller of a management request, for the audit row.
func actor(r *http.Request, p iothub.Principal) manage.Actor {
	return manage.Actor{Remote: remoteIP(r), By: "apikey " + p.KeyID}
}

func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// HashAPIKey is how API keys are stored: SHA-256 of the key text. Keys
// carry 256 random bits, so a fast hash is enough.
func HashAPIKey(key string) []byte {
	h := sha256.Sum256([]byte(key))
	return h[:]
}

// NewAPIKey returns a fresh API key text.
func NewAPIKey() string { return "ihk_" + randomToken(32) }

func randomToken(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// errorBody is the error shape of API.md.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

var statusOf = map[string]int{
	iothub.EINVALID:      http.StatusBadRequest,
	iothub.EUNAUTHORIZED: http.StatusUnauthorized,
	iothub.EFORBIDDEN:    http.StatusForbidden,
	iothub.ENOTFOUND:     http.StatusNotFound,
	iothub.ECONFLICT:     http.StatusConflict,
	iothub.ETOOLARGE:     http.StatusRequestEntityTooLarge,
	iothub.ETOOMANY:      http.StatusTooManyRequests,
	iothub.EOFFLINE:      http.StatusConflict,
	iothub.ETIMEOUT:      http.StatusGatewayTimeout,
	iothub.EUNAVAILABLE:  http.StatusServiceUnavailable,
	iothub.EINTERNAL:     http.StatusInternalServerError,
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := iothub.ErrorCode(err)
	status, ok := statusOf[code]
	if !ok {
		status = http.StatusInternalServerError
	}
	if status == http.StatusInternalServerError {
		s.Logger.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	var body errorBody
	body.Error.Code = code
	body.Error.Message = iothub.ErrorMessage(err)
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// decode reads a JSON body into v: capped size, unknown fields refused,
// exactly one value.
func decode(r *http.Request, v any) error {
	body := http.MaxBytesReader(nil, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			return iothub.Errorf(iothub.ETOOLARGE, "request body larger than %d bytes", MaxBodyBytes)
		case errors.Is(err, io.EOF):
			return iothub.Errorf(iothub.EINVALID, "request body is empty; a JSON object is expected")
		default:
			return iothub.Errorf(iothub.EINVALID, "invalid JSON body: %v", err)
		}
	}
	if dec.More() {
		return iothub.Errorf(iothub.EINVALID, "invalid JSON body: more than one value")
	}
	return nil
}

// publish sends e on the bus, logging (not failing) when the bus refuses.
func (s *Server) publish(ctx context.Context, e iothub.Event) {
	if s.Bus == nil {
		return
	}
	if err := s.Bus.Publish(ctx, e); err != nil {
		s.Logger.Warn("bus publish failed", "kind", e.Kind, "err", err)
	}
}

// audit records a security event, logging when the store refuses.
func (s *Server) audit(ctx context.Context, e iothub.AuditEvent) {
	e.Time = s.Now()
	if err := s.Store.Audit(ctx, e); err != nil {
		s.Logger.Warn("audit write failed", "kind", e.Kind, "err", err)
	}
}
