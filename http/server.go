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
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/feed"
	"github.com/iothub/iothub/manage"
	"github.com/prometheus/client_golang/prometheus"
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
	// Feed serves the live stream; nil leaves it unavailable.
	Feed *feed.Feed
	// Forwarder delivers forwarding rules; told at once of new and deleted
	// rules. May be nil.
	Forwarder *feed.Forwarder
	// NATSForwarding allows rules that forward to a NATS subject.
	NATSForwarding bool
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Ready are the checks of /readyz (database, bus, listeners).
	Ready []ReadyCheck
	// Registerer receives the HTTP request metrics; nil registers nothing.
	Registerer prometheus.Registerer
}

// ReadyCheck is one condition of readiness: Check returns why the node is
// not ready, or nil.
type ReadyCheck struct {
	Name  string
	Check func(context.Context) error
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
	// requests and latency count the answers by route (nil: not measured).
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
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
	s.registerOTA()
	s.registerThingModel()
	s.registerCertificates()
	s.registerDeviceAPI()
	s.registerStream()
	s.registerRules()
	s.registerHealth()
	if cfg.Registerer != nil {
		s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iothub_http_requests_total",
			Help: "HTTP requests answered, by route pattern and status code."}, []string{"route", "code"})
		s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "iothub_http_request_seconds",
			Help: "Time to answer an HTTP request, by route pattern.", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"route"})
		for _, c := range []prometheus.Collector{s.requests, s.latency} {
			if err := cfg.Registerer.Register(c); err != nil {
				s.Logger.Warn("http metrics not registered", "err", err)
			}
		}
	}
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	h, pattern := s.mux.Handler(r)
	if s.requests != nil {
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		w = sw
		start := time.Now()
		route := pattern
		if route == "" {
			route = "unmatched"
		}
		defer func() {
			s.requests.WithLabelValues(route, strconv.Itoa(sw.status)).Inc()
			s.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
		}()
	}
	if pattern == "" {
		s.noRoute(w, r, h)
		return
	}
	// Only the mux's own ServeHTTP sets the request's path values.
	s.mux.ServeHTTP(w, r)
}

// statusWriter remembers the status code a handler answers with.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// noRoute answers a request no route matches with the mux's status (404,
// or 405 with its Allow header) in the API's JSON error shape.
func (s *Server) noRoute(w http.ResponseWriter, r *http.Request, muxAnswer http.Handler) {
	c := &statusOnly{header: http.Header{}}
	muxAnswer.ServeHTTP(c, r)
	if allow := c.header.Get("Allow"); allow != "" {
		w.Header().Set("Allow", allow)
	}
	code, msg := iothub.ENOTFOUND, "no route "+r.URL.Path
	if c.status == http.StatusMethodNotAllowed {
		code, msg = EMETHOD, "method "+r.Method+" not allowed on "+r.URL.Path+" (allowed: "+c.header.Get("Allow")+")"
	} else if c.status != http.StatusNotFound && c.status != 0 {
		code, msg = http.StatusText(c.status), http.StatusText(c.status)
	}
	var body errorBody
	body.Error.Code, body.Error.Message = code, msg
	writeJSON(w, max(c.status, http.StatusNotFound), body)
}

// EMETHOD is the error code of a method a route does not take (405).
const EMETHOD = "method_not_allowed"

// statusOnly records the status and headers a handler writes, dropping the body.
type statusOnly struct {
	header http.Header
	status int
}

func (c *statusOnly) Header() http.Header         { return c.header }
func (c *statusOnly) Write(b []byte) (int, error) { return len(b), nil }
func (c *statusOnly) WriteHeader(status int)      { c.status = status }

// registerHealth adds /livez (the process answers) and /readyz (every
// ReadyCheck passes; 503 naming the failing ones otherwise).
func (s *Server) registerHealth() {
	s.handle("GET", "/livez", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.handle("GET", "/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		status, checks := http.StatusOK, map[string]string{}
		for _, c := range s.Ready {
			checks[c.Name] = "ok"
			if err := c.Check(ctx); err != nil {
				status, checks[c.Name] = http.StatusServiceUnavailable, err.Error()
			}
		}
		word := "ready"
		if status != http.StatusOK {
			word = "not ready"
		}
		writeJSON(w, status, map[string]any{"status": word, "checks": checks})
	})
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

// authenticate resolves the bearer API key to a principal. Failures are
// throttled per source address and key prefix, so that a client retrying
// bad keys is slowed without locking out the good keys of its neighbours
// behind the same address; a throttled answer carries Retry-After.
func (s *Server) authenticate(r *http.Request) (iothub.Principal, error) {
	raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	raw = strings.TrimSpace(raw)
	if !ok || raw == "" {
		return iothub.Principal{}, iothub.Errorf(iothub.EUNAUTHORIZED, "missing bearer API key")
	}
	bucket := "auth:" + remoteIP(r) + " " + keyPrefix(raw)
	if !s.allow(bucket, false) {
		return iothub.Principal{}, iothub.Errorf(iothub.ETOOMANY, "too many failed authentications with this key; retry later")
	}
	k, err := s.Store.APIKeyByHash(r.Context(), HashAPIKey(raw))
	if iothub.ErrorCode(err) == iothub.ENOTFOUND {
		s.allow(bucket, true)
		s.Logger.Warn("api key refused", "remote", remoteIP(r), "method", r.Method, "path", r.URL.Path, "reason", "unknown or revoked API key")
		return iothub.Principal{}, iothub.Errorf(iothub.EUNAUTHORIZED, "unknown or revoked API key")
	} else if err != nil {
		return iothub.Principal{}, err
	}
	return iothub.Principal{KeyID: k.ID, OrgID: k.OrgID, Role: k.Role, Bootstrap: k.Bootstrap}, nil
}

// keyPrefix is the part of an API key that names its throttling bucket:
// enough to tell keys apart, far too little to help guess one.
func keyPrefix(key string) string {
	const n = len("ihk_") + 6
	if len(key) > n {
		return key[:n]
	}
	return key
}

// Failed authentications allowed per bucket: a burst, then one per refill.
const (
	authBurst  = 10
	authRefill = 6 * time.Second
)

// allow consults the failure limiter for key. With spend it records one
// failure; without, it only tells whether failures are still allowed.
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
		l = rate.NewLimiter(rate.Every(authRefill), authBurst)
		s.limits[key] = l
	}
	if spend {
		return l.Allow()
	}
	return l.Tokens() >= 1
}

// listPage is the most rows a list without a store-side cursor answers at once.
const listPage = 1000

// pageOf sorts items by key and answers the page the request asks for:
// those after ?cursor, at most ?limit (default and cap listPage), and the
// cursor of the next page when more remain ("" otherwise).
func pageOf[T any](r *http.Request, items []T, key func(T) string) ([]T, string, error) {
	limit, err := queryInt(r, "limit", listPage, listPage)
	if err != nil {
		return nil, "", err
	}
	slices.SortFunc(items, func(a, b T) int { return strings.Compare(key(a), key(b)) })
	if cursor := r.URL.Query().Get("cursor"); cursor != "" {
		i, found := slices.BinarySearchFunc(items, cursor, func(it T, c string) int { return strings.Compare(key(it), c) })
		if found {
			i++
		}
		items = items[i:]
	}
	if len(items) > limit {
		return items[:limit], key(items[limit-1]), nil
	}
	return items, "", nil
}

// writePage writes a page of a list as {name: items, nextCursor} (the
// cursor only when more remain).
func writePage(w http.ResponseWriter, name string, items any, next string) {
	body := map[string]any{name: items}
	if next != "" {
		body["nextCursor"] = next
	}
	writeJSON(w, http.StatusOK, body)
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
	iothub.EMODEL:        http.StatusBadRequest,
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
	iothub.EGONE:         http.StatusGone,
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
	if status == http.StatusTooManyRequests && w.Header().Get("Retry-After") == "" {
		// Every throttle here refills a failure token within authRefill.
		w.Header().Set("Retry-After", strconv.Itoa(int(authRefill/time.Second)))
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
