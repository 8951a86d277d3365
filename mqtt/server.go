// Package mqtt is the hub's MQTT server. It speaks MQTT 3.1.1 and 5 with
// a connection layer made for many idle devices (an epoll poller, no
// goroutine or buffer per idle connection; mochi-mqtt's packets package
// is the codec), and the EnOS device protocol (../shared/PROTOCOL.md) on
// top: the signed login, the per-device topic confinement, upstream
// request/reply, downstream calls to devices that never subscribed,
// device states and dynamic activation.
package mqtt

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/feed"
	"github.com/iothub/iothub/manage"
)

// DefaultMaxPayload caps one PUBLISH payload, as the EnOS SDKs do.
const DefaultMaxPayload = 512 << 10

// Config wires a Server to the rest of the hub.
type Config struct {
	Store iothub.Store
	Certs iothub.CertificateService // may be nil: certificate products are then refused
	Bus   iothub.Bus                // may be nil: no live reaction to changes
	// Manage carries out management operations devices ask for (renewal);
	// nil builds one from Store, Certs and Bus.
	Manage *manage.Service
	// Feed records what devices post, once committed, and their state
	// changes for applications; nil records nothing.
	Feed   *feed.Feed
	Logger *slog.Logger
	// Registerer receives the Prometheus metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// TLS carries the hub's server certificates for ListenTLS. The server
	// copies it and applies its own policy (TLS 1.2+, AEAD ECDHE suites,
	// optional client certificate verified by Certs).
	TLS *tls.Config
	// LegacySuites adds iothub.LegacyTLS12CipherSuites to the TLS
	// listener, after the strong ones, for devices that cannot do ECDHE.
	LegacySuites bool
	// MaxPayload caps a PUBLISH payload (0: DefaultMaxPayload).
	MaxPayload int
	// LoginMaxSkew, when positive, refuses a login whose signed timestamp
	// (ms since the epoch) is further than this from the hub's clock, so a
	// captured CONNECT cannot be replayed later. Off (0) by default: EnOS
	// does not check it and the C SDK signs a fixed timestamp.
	LoginMaxSkew time.Duration
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Node names this hub node in the shared store, stable across its
	// restarts: the sessions it opens are recorded under it, a restart
	// ends those a crash left, and other nodes end them once its lease
	// expires. Empty: a random name, for a single run.
	Node string
}

// Server is the MQTT side of the hub. It implements iothub.DeviceGateway.
type Server struct {
	cfg     Config
	log     *slog.Logger
	poll    *poller
	tlsConf *tls.Config
	met     *metrics
	now     func() time.Time
	maxPay  int
	// maxPacket caps an inbound packet: the payload cap, with room for
	// the topic and properties.
	maxPacket int

	// The connection layer: live connections, sessions by client
	// identifier, the persistent sessions of disconnected clients, and
	// the subscriptions.
	cmu       sync.Mutex
	live      map[*conn]struct{}
	clients   map[string]*conn
	saved     map[string]*savedSession
	connWG    sync.WaitGroup // one per accepted connection, until its session ended
	topics    topicIndex
	listeners []*listener
	closing   bool // Close has begun: Serve starts nothing

	loginBurst atomic.Int64 // logins since the memory was last given back
	lastLogin  atomic.Int64 // unix nanoseconds of the last login
	lastTrim   time.Time    // the sweep's own

	mu       sync.RWMutex
	byClient map[*conn]*session
	byDevice map[iothub.DeviceID]*session // static-login sessions
	byAct    map[iothub.DeviceID]*session // activation (securemode 3) sessions
	bySerial map[string]map[*session]struct{}

	pmu     sync.Mutex
	pending map[string]*pendingCall
	ended   map[iothub.DeviceID]time.Time // last-seen of ended sessions, awaiting flush
	callSeq atomic.Uint32                 // numbers downstream requests (see nextCallID)

	limits  *limiters
	samples *groupWriter[iothub.Sample]
	events  *groupWriter[iothub.DeviceEvent]
	relay   appRelay       // the change log to applications, while any is connected
	side    *sideWriter    // login/logout states and audit rows, batched
	reg     *registryCache // nil without a bus: nothing would invalidate it
	models  modelCache     // products' thing models

	instance   string // this run's lease token
	draining   atomic.Bool
	abandon    chan struct{} // closed when Drain gives up on the calls under way
	drainOnce  sync.Once
	touchEvery time.Duration
	unsub      func()
	stop       chan struct{}
	wg         sync.WaitGroup
	closeOnce  sync.Once
}

// Tuning of the MQTT server for many small devices.
const (
	// maxUnacked is how many QoS 1 deliveries a client may leave
	// unacknowledged: the sweep closes a client holding more.
	maxUnacked        = 1024
	receiveMaximum    = 64                    // concurrent inbound QoS 1 per client, said in the MQTT 5 CONNACK
	sessionExpirySec  = 15 * 60               // persistent sessions live 15 min after disconnect
	connectTimeout    = 10 * time.Second      // TLS handshake + CONNECT must arrive within this
	activationSession = 60 * time.Second      // a mode-3 session is closed after this
	sideInterval      = 20 * time.Millisecond // login side effects are written this often…
	sideBatch         = 512                   // …or once this many are queued
	writeBatch        = 1000                  // posts (or events) per group commit at most
)

// New builds a Server. Call ListenTCP and/or ListenTLS, then Serve, and
// Close when done.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("mqtt: Config.Store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.MaxPayload <= 0 {
		cfg.MaxPayload = DefaultMaxPayload
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Manage == nil {
		cfg.Manage = manage.New(manage.Config{Store: cfg.Store, Certs: cfg.Certs, Bus: cfg.Bus, Logger: cfg.Logger, Now: cfg.Now})
	}
	if cfg.TLS != nil && len(cfg.TLS.Certificates) == 0 && cfg.TLS.GetCertificate == nil {
		return nil, errors.New("mqtt: Config.TLS has no server certificate")
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	poll, err := thePoller()
	if err != nil {
		return nil, err
	}
	if cfg.Node == "" {
		cfg.Node = iothub.RandomString(16)
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.Logger,
		poll:       poll,
		maxPacket:  cfg.MaxPayload + 64<<10,
		live:       map[*conn]struct{}{},
		clients:    map[string]*conn{},
		saved:      map[string]*savedSession{},
		met:        met,
		now:        cfg.Now,
		maxPay:     cfg.MaxPayload,
		byClient:   map[*conn]*session{},
		byDevice:   map[iothub.DeviceID]*session{},
		byAct:      map[iothub.DeviceID]*session{},
		bySerial:   map[string]map[*session]struct{}{},
		pending:    map[string]*pendingCall{},
		instance:   iothub.RandomString(16),
		limits:     newLimiters(),
		touchEvery: 5 * time.Second,
		stop:       make(chan struct{}),
		abandon:    make(chan struct{}),
	}
	var start [4]byte
	_, _ = rand.Read(start[:])
	s.callSeq.Store(binary.BigEndian.Uint32(start[:]) % 1_000_000_000)
	if cfg.TLS != nil {
		s.tlsConf = serverTLS(cfg.TLS, cfg.LegacySuites)
		if cfg.LegacySuites {
			s.log.Warn("mqtt: legacy TLS 1.2 suites with RSA key exchange are on (--tls-legacy-suites): no forward secrecy for the devices that use them")
		}
	}
	if cfg.Bus != nil {
		s.reg = newRegistryCache(cfg.Store, cfg.Now)
	}
	if err := s.startLease(); err != nil {
		return nil, err
	}
	s.samples = newGroupWriter(recorded(cfg.Store.AppendSamples, cfg.Feed, feed.Samples), writeBatch, s.notStored("measurepoints"))
	s.events = newGroupWriter(recorded(cfg.Store.AppendEvents, cfg.Feed, feed.Events), writeBatch, s.notStored("events"))
	s.side = newSideWriter(cfg.Store, cfg.Feed, cfg.Logger, s.refuseLate, sideInterval, sideBatch)
	return s, nil
}

// notStored counts the posts of a kind that the store refused, and says
// so in the log at most once a second.
func (s *Server) notStored(kind string) func(items int, err error) {
	var warn rate.Sometimes
	warn.Interval = time.Second
	return func(items int, err error) {
		s.met.notStored.WithLabelValues(kind).Add(float64(items))
		warn.Do(func() {
			s.log.Warn("mqtt: posts not stored; their devices are told to retry", "kind", kind, "items", items, "error", err)
		})
	}
}

// serverTLS applies the hub's TLS policy to a copy of base, with the
// legacy suites after the strong ones if asked.
func serverTLS(base *tls.Config, legacy bool) *tls.Config {
	c := base.Clone()
	c.MinVersion = tls.VersionTLS12
	c.CipherSuites = iothub.TLS12CipherSuites
	if legacy {
		c.CipherSuites = append(slices.Clone(iothub.TLS12CipherSuites), iothub.LegacyTLS12CipherSuites...)
	}
	// The chain is verified by CertificateService.AuthorizeClient against
	// the hub CA and the product's verified external CAs, so the handshake
	// only asks for a certificate.
	c.ClientAuth = tls.RequestClientCert
	c.SessionTicketsDisabled = false
	return c
}

// ListenTCP opens a plain MQTT listener and returns its address.
func (s *Server) ListenTCP(addr string) (net.Addr, error) {
	return s.listen(addr, nil)
}

// ListenTLS opens an MQTT-over-TLS listener and returns its address.
func (s *Server) ListenTLS(addr string) (net.Addr, error) {
	if s.tlsConf == nil {
		return nil, errors.New("mqtt: ListenTLS needs Config.TLS")
	}
	return s.listen(addr, s.tlsConf)
}

func (s *Server) listen(addr string, tc *tls.Config) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &listener{ln: ln, tls: tc}
	s.cmu.Lock()
	s.listeners = append(s.listeners, l)
	s.cmu.Unlock()
	return ln.Addr(), nil
}

// Serve starts accepting connections on every listener and the background
// loops; it returns at once.
func (s *Server) Serve() error {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	if s.closing {
		return errors.New("mqtt: Serve after Close")
	}
	if s.cfg.Bus != nil {
		s.unsub = s.cfg.Bus.Subscribe(s.onEvent)
	}
	s.wg.Add(2)
	go s.sweep()
	go s.lease()
	for _, l := range s.listeners {
		s.wg.Add(1)
		go s.accept(l)
	}
	return nil
}

// Close disconnects every client, stops the listeners and flushes the
// accepted samples, the queued state changes and audit rows, and the
// last-seen times to the store.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cmu.Lock()
		s.closing = true
		unsub := s.unsub
		s.cmu.Unlock()
		if unsub != nil {
			unsub()
		}
		s.closeConnections()
		close(s.stop)
		s.wg.Wait()
		s.samples.Close()
		s.events.Close()
		s.side.Close() // after the connections: the sessions' offline changes are queued
		s.flushTouches(context.Background())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := s.cfg.Store.StopNode(ctx, s.cfg.Node, s.instance); err != nil {
			s.log.Warn("mqtt: giving up the node's lease; other nodes reap it when it expires", "node", s.cfg.Node, "error", err)
		}
		cancel()
	})
	return nil
}

// closeConnections stops the listeners, then ends every connection (MQTT
// 5: DISCONNECT 0x8B, server shutting down) and waits for their sessions
// to end.
func (s *Server) closeConnections() {
	s.cmu.Lock()
	for _, l := range s.listeners {
		l.end.Store(true)
		l.ln.Close()
	}
	all := make([]*conn, 0, len(s.live))
	for c := range s.live {
		all = append(all, c)
	}
	s.cmu.Unlock()
	for _, c := range all {
		go c.disconnect(packets.ErrServerShuttingDown) // a device that does not read holds only its own
	}
	s.connWG.Wait()
}

// listener accepts MQTT connections, over TLS when tls is set.
type listener struct {
	ln  net.Listener
	tls *tls.Config
	end atomic.Bool
}

// accept takes connections until the listener closes. A plain connection
// is handed to the poller at once, with no goroutine of its own; a TLS
// one gets a goroutine for its handshake only.
func (s *Server) accept(l *listener) {
	defer s.wg.Done()
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			if l.end.Load() {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("mqtt: accept", "error", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.cmu.Lock()
		if l.end.Load() {
			s.cmu.Unlock()
			nc.Close()
			return
		}
		s.connWG.Add(1)
		s.cmu.Unlock()
		if l.tls != nil {
			go s.handshake(l, nc)
			continue
		}
		s.attach(nc, nil, nil)
	}
}

// handshake runs a TLS handshake within connectTimeout, counting
// failures by reason, and attaches the connection.
func (s *Server) handshake(l *listener, nc net.Conn) {
	_ = nc.SetDeadline(time.Now().Add(connectTimeout))
	sock := s.socket(nc)
	if sock == nil {
		s.connWG.Done()
		return
	}
	sock.blocking = true
	tc := tls.Server(sock, l.tls)
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.met.handshakeFailures.WithLabelValues(handshakeReason(err)).Inc()
		nc.Close()
		s.connWG.Done()
		return
	}
	s.met.handshakes.Inc()
	if slices.Contains(iothub.LegacyTLS12CipherSuites, tc.ConnectionState().CipherSuite) {
		s.met.legacyHandshakes.Inc()
	}
	sock.blocking = false
	_ = nc.SetDeadline(time.Time{})
	s.attach(nc, sock, tc)
}

// socket wraps an accepted connection for non-blocking reads and
// deadline-bound writes; nil when it is not a socket.
func (s *Server) socket(nc net.Conn) *nbSocket {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		nc.Close()
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		nc.Close()
		return nil
	}
	return &nbSocket{raw: raw, w: &deadlineConn{Conn: nc, stalled: func() { s.met.kicks.WithLabelValues("write_stalled").Inc() }}}
}

// attach registers a connection with the poller, which starts its reader
// when the CONNECT arrives.
func (s *Server) attach(nc net.Conn, sock *nbSocket, tc *tls.Conn) {
	if sock == nil {
		if sock = s.socket(nc); sock == nil {
			s.connWG.Done()
			return
		}
	}
	c := &conn{srv: s, raw: sock.raw, in: sock, out: sock, sock: nc, remote: nc.RemoteAddr().String()}
	if tc != nil {
		c.in, c.out, c.tls = tc, tc, tc
	}
	s.cmu.Lock()
	s.live[c] = struct{}{}
	s.cmu.Unlock()
	c.lastRead.Store(time.Now().UnixNano()) // the CONNECT deadline counts from here
	// The handshake may have read input past its end (the CONNECT sent
	// with the client's Finished): a TLS connection starts with a read.
	if err := s.poll.add(c, tc == nil); err != nil {
		s.log.Warn("mqtt: cannot watch a connection", "error", err)
		c.close(err)
		return
	}
	if tc != nil {
		dispatch(c)
	}
}

// handshakeReason classifies a TLS handshake error for the metric label.
func handshakeReason(err error) string {
	msg := err.Error()
	switch {
	case errors.Is(err, io.EOF), strings.Contains(msg, "reset by peer"):
		return "eof"
	case errors.Is(err, context.DeadlineExceeded), strings.Contains(msg, "timeout"):
		return "timeout"
	case strings.Contains(msg, "version"):
		return "protocol_version"
	case strings.Contains(msg, "cipher"):
		return "cipher"
	case strings.Contains(msg, "certificate"):
		return "certificate"
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return "not_tls"
	default:
		return "other"
	}
}
