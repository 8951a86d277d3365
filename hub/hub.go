// Package hub assembles one iothub node from its adapters: the registry
// (SQLite, or PostgreSQL shared by several nodes), the CA and certificate
// service, the MQTT broker, the HTTP API and the bus (in-process, or NATS
// between nodes). cmd/iothub and the end-to-end tests both start a
// hub through Open, so tests run exactly what users run.
package hub

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/changes"
	"github.com/iothub/iothub/feed"
	hubhttp "github.com/iothub/iothub/http"
	"github.com/iothub/iothub/inmem"
	"github.com/iothub/iothub/manage"
	"github.com/iothub/iothub/mqtt"
	natsbus "github.com/iothub/iothub/nats"
	"github.com/iothub/iothub/pki"
	"github.com/iothub/iothub/postgres"
	"github.com/iothub/iothub/seal"
	"github.com/iothub/iothub/sqlite"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config is how a node starts. An empty address turns that listener off.
type Config struct {
	DataDir   string
	MQTTAddr  string // plain MQTT, default :11883
	MQTTSAddr string // MQTT over TLS, default :18883
	HTTPAddr  string // management API, default 127.0.0.1:8080
	HTTPSAddr string // the same routes over TLS, default :8443
	// Hostnames go into the hub's server certificate (DNS names or IPs).
	Hostnames []string
	// PublicURL is the base put in certificates' CRL and AIA URLs; default
	// https://{first hostname}:{https port}.
	PublicURL string
	// DatabaseURL, when set (postgres://…), puts the registry in PostgreSQL
	// instead of DataDir/iothub.db, so several nodes can share it. Nodes of
	// one cluster must also share DataDir's data.key, ca/ and admin.key.
	DatabaseURL string
	// NATSURL, when set (nats://…), carries events between nodes over NATS
	// instead of the in-process bus.
	NATSURL string
	// ServerKey picks the hub certificate a TLS client gets: ServerKeyClient
	// (default: ECDSA to clients that list ECDSA first, RSA-2048 to the
	// rest), ServerKeyRSA or ServerKeyECDSA.
	ServerKey string
	// MetricsPublic also serves /metrics on the HTTPS listener; by default
	// it is served only on the management listener (HTTPAddr, loopback).
	MetricsPublic bool
	// TLSLegacySuites offers iothub.LegacyTLS12CipherSuites on MQTT over
	// TLS (only there) to devices that cannot do ECDHE. Off by default.
	TLSLegacySuites bool
	// Durability says what a commit (and so an acknowledged post) survives:
	// DurabilityProcess (default) a crash of the process, DurabilityPower
	// also a power loss or OS crash, at the cost of an fsync per commit on
	// SQLite. PostgreSQL keeps its own setting (synchronous_commit, on by
	// default: power-safe).
	Durability string
	// LoginMaxSkew, when positive, refuses MQTT logins whose signed
	// timestamp is further than this from the hub's clock (off by default,
	// as in EnOS).
	LoginMaxSkew time.Duration
	// ReconcileEvery is how often the node reads the change log for what
	// the bus did not bring (changes.DefaultEvery if 0).
	ReconcileEvery time.Duration
	// DataRetention is how long the data log keeps what devices posted
	// for resuming streams and forwarding rules (feed.DefaultRetention if zero).
	DataRetention time.Duration
	Logger        *slog.Logger
}

// Durability levels of Config.Durability.
const (
	DurabilityProcess = "process"
	DurabilityPower   = "power"
)

// Default addresses, as API.md fixes them.
const (
	DefaultMQTTAddr  = ":11883"
	DefaultMQTTSAddr = ":18883"
	DefaultHTTPAddr  = "127.0.0.1:8080"
	DefaultHTTPSAddr = ":8443"
)

// Hub is a running node.
type Hub struct {
	cfg       Config
	log       *slog.Logger
	db        iothub.Store
	natsBus   *natsbus.Bus
	gateway   *natsbus.Gateway // calls to devices on other nodes; nil on a single node
	changes   *changes.Bus
	feed      *feed.Feed
	forwarder *feed.Forwarder
	auth      *pki.Authority
	certs     *pki.Service
	broker    *mqtt.Server
	// chooseCert picks the server certificate of a TLS handshake.
	chooseCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	servers    []*http.Server
	adminKey   string
	// stopped names the listeners whose serve loop ended with an error.
	stoppedMu sync.Mutex
	stopped   []string

	mqttAddr, mqttsAddr, httpURL, httpsURL string
}

// Open creates what is missing under cfg.DataDir (data key, database, CA,
// server certificates, bootstrap API key), starts every listener and
// returns once they all accept connections.
func Open(cfg Config) (h *Hub, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if len(cfg.Hostnames) == 0 {
		cfg.Hostnames = []string{"localhost", "127.0.0.1"}
	}
	h = &Hub{cfg: cfg, log: cfg.Logger}
	// The error returns set h to nil before this runs: close the copy.
	partial := h
	defer func() {
		if err != nil {
			partial.Close()
		}
	}()
	var powerSafe bool
	switch cfg.Durability {
	case "", DurabilityProcess:
	case DurabilityPower:
		powerSafe = true
	default:
		return nil, fmt.Errorf("durability %q: want %s or %s", cfg.Durability, DurabilityProcess, DurabilityPower)
	}
	db, err := openStore(cfg.DataDir, cfg.DatabaseURL, powerSafe)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	h.db = newAuditLogged(db, h.log, reg)
	if err := h.ensureAdminKey(); err != nil {
		return nil, err
	}

	// Listen first, so the public URL can name the real HTTPS port.
	httpLn, err := listen(cfg.HTTPAddr)
	if err != nil {
		return nil, err
	}
	httpsLn, err := listen(cfg.HTTPSAddr)
	if err != nil {
		closeAll(httpLn)
		return nil, err
	}
	if httpLn != nil {
		h.httpURL = "http://" + httpLn.Addr().String()
	}
	if httpsLn != nil {
		h.httpsURL = "https://" + net.JoinHostPort(cfg.Hostnames[0], portOf(httpsLn.Addr()))
	}
	publicURL := cfg.PublicURL
	if publicURL == "" {
		publicURL = h.httpsURL
		if publicURL == "" {
			publicURL = h.httpURL
		}
	}

	if h.auth, err = pki.OpenAuthority(filepath.Join(cfg.DataDir, "ca"), pki.AuthorityOptions{Hostnames: cfg.Hostnames, PublicURL: publicURL, Shared: h.db}); err != nil {
		closeAll(httpLn, httpsLn)
		return nil, err
	}
	if cfg.ServerKey == "" {
		cfg.ServerKey = ServerKeyClient
	}
	if h.chooseCert, err = certificateChooser(h.auth.ServerCertificates, cfg.ServerKey); err != nil {
		closeAll(httpLn, httpsLn)
		return nil, err
	}
	// The bus is the fast path; the change log in the store is the truth
	// every node catches up from, periodically and when NATS reconnects.
	var fast iothub.Bus = inmem.NewBus()
	var durable atomic.Pointer[changes.Bus]
	if cfg.NATSURL != "" {
		nb, err := natsbus.Open(cfg.NATSURL, natsbus.Options{Logger: h.log, OnReconnect: func() {
			if d := durable.Load(); d != nil {
				d.Reconcile()
			}
		}})
		if err != nil {
			closeAll(httpLn, httpsLn)
			return nil, err
		}
		h.natsBus, fast = nb, nb
	}
	if h.changes, err = changes.New(fast, h.db, changes.Options{Every: cfg.ReconcileEvery, Logger: h.log, Registerer: reg}); err != nil {
		closeAll(httpLn, httpsLn)
		return nil, err
	}
	durable.Store(h.changes)
	var bus iothub.Bus = h.changes
	if h.certs, err = pki.NewService(h.auth, h.db, bus, h.log); err != nil {
		closeAll(httpLn, httpsLn)
		return nil, err
	}

	h.feed = feed.New(feed.Config{Store: h.db, Bus: bus, Logger: h.log, Retention: cfg.DataRetention})
	var natsForward func(subject string, data []byte) error
	if h.natsBus != nil {
		natsForward = h.natsBus.Forward
	}
	h.forwarder = feed.NewForwarder(h.feed, natsForward)
	mgr := manage.New(manage.Config{Store: h.db, Certs: h.certs, Bus: bus, Feed: h.feed, Logger: h.log, DeviceURL: publicURL})
	node, err := nodeID(filepath.Join(cfg.DataDir, "node.id"))
	if err != nil {
		closeAll(httpLn, httpsLn)
		return nil, err
	}
	if h.broker, err = mqtt.New(mqtt.Config{
		Store: h.db, Certs: h.certs, Bus: bus, Manage: mgr, Feed: h.feed, Logger: h.log, Registerer: reg,
		TLS: h.tlsConfig(), LegacySuites: cfg.TLSLegacySuites, LoginMaxSkew: cfg.LoginMaxSkew, Node: node,
	}); err != nil {
		closeAll(httpLn, httpsLn)
		return nil, err
	}
	if cfg.MQTTAddr != "" {
		a, err := h.broker.ListenTCP(cfg.MQTTAddr)
		if err != nil {
			closeAll(httpLn, httpsLn)
			return nil, err
		}
		h.mqttAddr = a.String()
	}
	if cfg.MQTTSAddr != "" {
		a, err := h.broker.ListenTLS(cfg.MQTTSAddr)
		if err != nil {
			closeAll(httpLn, httpsLn)
			return nil, err
		}
		h.mqttsAddr = a.String()
	}
	if err := h.broker.Serve(); err != nil { // returns at once: the listeners run on their own
		h.log.Error("mqtt broker stopped", "err", err)
		h.listenerStopped("mqtt")
	}

	h.followAuthority(bus)

	// In a cluster, calls reach devices connected to other nodes over NATS.
	var gateway iothub.DeviceGateway = h.broker
	if h.natsBus != nil {
		gw, err := h.natsBus.ServeCalls(h.broker, h.db)
		if err != nil {
			closeAll(httpLn, httpsLn)
			return nil, err
		}
		h.gateway, gateway = gw, gw
	}
	api := hubhttp.NewServer(hubhttp.Config{
		Store: h.db, Certs: h.certs, Gateway: gateway, Bus: bus, Manage: mgr, Logger: h.log,
		Feed: h.feed, Forwarder: h.forwarder, NATSForwarding: h.natsBus != nil,
		Metrics:    promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		Ready:      h.readyChecks(),
		Registerer: reg,
	})
	if httpLn != nil {
		h.serve(httpLn, api)
	}
	if httpsLn != nil {
		var public http.Handler = api
		if !cfg.MetricsPublic {
			public = withoutMetrics(api)
		}
		h.serve(tls.NewListener(httpsLn, h.tlsConfig()), public)
	}
	h.log.Info("iothub ready", "data", cfg.DataDir, "http", h.httpURL, "https", h.httpsURL, "mqtt", h.mqttAddr, "mqtts", h.mqttsAddr)
	return h, nil
}

// readyChecks are what /readyz asks: the database answers, the bus is
// connected, no listener has stopped.
func (h *Hub) readyChecks() []hubhttp.ReadyCheck {
	bus := func(context.Context) error { return nil } // in-process: up while the process is
	if h.natsBus != nil {
		bus = h.natsBus.Ready
	}
	return []hubhttp.ReadyCheck{
		{Name: "database", Check: func(ctx context.Context) error {
			_, err := h.db.BootstrapKey(ctx)
			if iothub.ErrorCode(err) == iothub.ENOTFOUND {
				return nil // it answered
			}
			return err
		}},
		{Name: "bus", Check: bus},
		{Name: "listeners", Check: func(context.Context) error {
			h.stoppedMu.Lock()
			defer h.stoppedMu.Unlock()
			if len(h.stopped) > 0 {
				return fmt.Errorf("stopped: %s", strings.Join(h.stopped, ", "))
			}
			return nil
		}},
	}
}

func (h *Hub) listenerStopped(name string) {
	h.stoppedMu.Lock()
	defer h.stoppedMu.Unlock()
	h.stopped = append(h.stopped, name)
}

// tlsConfig is the server side of every TLS listener. A client certificate
// is asked for but not verified here: which CA a device may use depends on
// its product, so the certificate service decides at login.
// The server certificate is chosen per client by Config.ServerKey.
func (h *Hub) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		CipherSuites:   iothub.TLS12CipherSuites,
		GetCertificate: h.chooseCert,
		ClientAuth:     tls.RequestClientCert,
	}
}

func (h *Hub) serve(ln net.Listener, handler http.Handler) {
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      90 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(h.log.Handler(), slog.LevelDebug),
	}
	h.servers = append(h.servers, srv)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Error("http server stopped", "addr", ln.Addr(), "err", err)
			h.listenerStopped("http " + ln.Addr().String())
		}
	}()
}

// openStore opens (creating what is missing) the data directory's data
// key and the registry: PostgreSQL at databaseURL, or SQLite in dataDir,
// power-safe if asked.
func openStore(dataDir, databaseURL string, powerSafe bool) (iothub.Store, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	key, err := seal.LoadOrCreateKey(filepath.Join(dataDir, "data.key"))
	if err != nil {
		return nil, err
	}
	sealer, err := seal.New(key)
	if err != nil {
		return nil, err
	}
	// Returned only on success: a nil *DB in the interface would not be nil.
	if databaseURL != "" {
		db, err := postgres.Open(databaseURL, sealer)
		if err != nil {
			return nil, err
		}
		return db, nil
	}
	db, err := sqlite.OpenWith(filepath.Join(dataDir, "iothub.db"), sealer, sqlite.Options{PowerSafe: powerSafe})
	if err != nil {
		return nil, err
	}
	return db, nil
}

// ensureAdminKey makes sure a bootstrap key exists and reads it from
// DataDir/admin.key. On first start it creates both. A bootstrap key
// found revoked (possible before F3 was closed) or missing is reinstated
// from the file, or replaced by a new one; a start never fails on it. A
// file that does not hold the current key (rotated on another node) is
// reported and the hub starts without a local key.
func (h *Hub) ensureAdminKey() error {
	ctx := context.Background()
	path := filepath.Join(h.cfg.DataDir, "admin.key")
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		h.adminKey = strings.TrimSpace(string(b))
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	cur, err := h.db.BootstrapKey(ctx)
	switch {
	case err == nil && cur.RevokedAt == nil:
		if h.adminKey != "" && subtle.ConstantTimeCompare(hubhttp.HashAPIKey(h.adminKey), cur.Hash) == 1 {
			return nil
		}
		if h.adminKey == "" {
			return fmt.Errorf("the database already has a bootstrap key but %s is missing: copy admin.key (with data.key and ca/) from the first node's data directory into %s, or run iothub admin-key rotate", path, h.cfg.DataDir)
		}
		h.log.Warn("admin.key does not hold the current bootstrap key (rotated elsewhere?); copy the current one or run iothub admin-key rotate", "path", path)
		h.adminKey = ""
		return nil
	case err != nil && iothub.ErrorCode(err) != iothub.ENOTFOUND:
		return err
	}
	created := h.adminKey == ""
	if created {
		h.adminKey = hubhttp.NewAPIKey()
	}
	if err := h.db.SetBootstrapKey(ctx, hubhttp.HashAPIKey(h.adminKey)); err != nil {
		return err
	}
	if !created {
		h.log.Warn("bootstrap key was revoked or missing; reinstated from " + path)
		return nil
	}
	if err := os.WriteFile(path, []byte(h.adminKey+"\n"), 0o600); err != nil {
		return err
	}
	h.log.Info("bootstrap admin API key created in " + path + " (mode 0600); the CLI reads it from there")
	return nil
}

// RotateAdminKey replaces the bootstrap key of the hub whose data
// directory is dataDir (and database databaseURL, "" for its SQLite file)
// with a new one, written to dataDir/admin.key, and returns it. The old
// key stops working at once, also on running nodes. It is the only way to
// retire the bootstrap key: the API cannot revoke it.
func RotateAdminKey(dataDir, databaseURL string) (string, error) {
	db, err := openStore(dataDir, databaseURL, false)
	if err != nil {
		return "", err
	}
	defer db.Close()
	key := hubhttp.NewAPIKey()
	path := filepath.Join(dataDir, "admin.key")
	tmp := path + ".new"
	// The new key is on disk before it counts, so it is never lost.
	if err := os.WriteFile(tmp, []byte(key+"\n"), 0o600); err != nil {
		return "", err
	}
	if err := db.SetBootstrapKey(context.Background(), hubhttp.HashAPIKey(key)); err != nil {
		os.Remove(tmp)
		return "", err
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", err
	}
	return key, nil
}

// withoutMetrics hides /metrics (I2): the public listener does not tell
// the world the hub's load and versions unless Config.MetricsPublic says so.
func withoutMetrics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			http.NotFound(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// nodeID reads the node's name from path, creating it on first start. It
// stays with the data directory, so a restarted node knows which sessions
// it held; nodes of a cluster must not share the file.
func nodeID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	host, _ := os.Hostname()
	id := iothub.RandomString(12)
	if host != "" {
		id = host + "-" + id
	}
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	return id, nil
}

func listen(addr string) (net.Listener, error) {
	if addr == "" {
		return nil, nil
	}
	return net.Listen("tcp", addr)
}

func closeAll(lns ...net.Listener) {
	for _, ln := range lns {
		if ln != nil {
			ln.Close()
		}
	}
}

func portOf(a net.Addr) string {
	_, port, _ := net.SplitHostPort(a.String())
	return port
}

// AdminKey is the bootstrap API key.
func (h *Hub) AdminKey() string { return h.adminKey }

// HTTPURL is the base URL of the plain HTTP listener ("" when off).
func (h *Hub) HTTPURL() string { return h.httpURL }

// HTTPSURL is the base URL of the HTTPS listener ("" when off).
func (h *Hub) HTTPSURL() string { return h.httpsURL }

// MQTTAddr is the plain MQTT listener's address ("" when off).
func (h *Hub) MQTTAddr() string { return h.mqttAddr }

// MQTTSAddr is the MQTT-over-TLS listener's address ("" when off).
func (h *Hub) MQTTSAddr() string { return h.mqttsAddr }

// followAuthority makes every node feel a CA rotation or retirement made
// on any node: it reloads the CAs (from the cluster's copy in the store),
// then closes the sessions whose certificates they no longer admit and
// tells the others to refresh their trust. In this order, so the re-check
// never runs against the old CAs.
func (h *Hub) followAuthority(bus iothub.Bus) {
	bus.Subscribe(func(e iothub.Event) {
		if e.Kind != iothub.EventAuthorityChanged {
			return
		}
		go func() {
			if err := h.certs.ReloadAuthority(); err != nil {
				h.log.Error("reload CAs", "err", err)
			}
			if h.broker != nil {
				h.broker.AuthorityChanged()
			}
		}()
	})
}

// ChainPEM is the CA chain devices trust.
func (h *Hub) ChainPEM() []byte { return h.auth.ChainPEM() }

// HasSession reports whether the device has a live session on this node.
func (h *Hub) HasSession(productKey, deviceKey string) bool {
	return h.broker.Online(productKey, deviceKey)
}

// Store is the node's registry.
func (h *Hub) Store() iothub.Store { return h.db }

// DrainTimeout is how long a stopping hub waits for the service calls
// under way to be answered.
const DrainTimeout = 5 * time.Second

// Close stops the node gracefully: it refuses new logins and calls, gives
// the calls under way (here and forwarded to other nodes) DrainTimeout to
// be answered (then answers them unavailable), stops the listeners, ends the sessions (MQTT 5: DISCONNECT
// 0x8B), flushes pending writes and closes the database.
func (h *Hub) Close() error {
	drain, cancelDrain := context.WithTimeout(context.Background(), DrainTimeout)
	if h.broker != nil {
		h.broker.Drain(drain)
	}
	if h.gateway != nil {
		h.gateway.Drain(drain)
	}
	cancelDrain()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	if h.forwarder != nil {
		h.forwarder.Close()
	}
	if h.feed != nil {
		h.feed.Close() // ends the streams, so the servers can shut down
	}
	for _, s := range h.servers {
		errs = append(errs, s.Shutdown(ctx))
	}
	if h.broker != nil {
		errs = append(errs, h.broker.Close())
	}
	if h.certs != nil {
		h.certs.Close()
	}
	if h.changes != nil {
		h.changes.Close()
	}
	if h.natsBus != nil {
		errs = append(errs, h.natsBus.Close())
	}
	if h.db != nil {
		errs = append(errs, h.db.Close())
	}
	return errors.Join(errs...)
}
