// Package edge is the device side of iothub: a library a device maker's
// program embeds, and the core of the iotedge agent. An Agent does,
// unattended, the whole device flow of the hub's security model:
// dynamic activation with the factory ProductSecret (securemode 3) to learn
// the DeviceSecret; for a certificate product, a key pair made in the key
// store (files or a TPM), a CSR and enrollment over HTTPS; a mutual-TLS
// MQTT session verified against the pinned CA with a securemode-2 login;
// periodic measurepoints (buffered on disk while offline and resumed),
// service calls and measurepoint set; certificate renewal at two thirds of
// its life; and a reset that revokes the certificate and wipes the keys.
//
//	a, err := edge.New(edge.Config{StateDir: "/var/lib/iotedge", CAFile: "ca.pem",
//		Broker: "ssl://hub:18883", API: "https://hub:8443",
//		ProductKey: pk, ProductSecret: ps, DeviceKey: serial})
//	if err != nil { … }
//	defer a.Close()
//	err = a.Run(ctx)
package edge

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iothub/iothub/sign"
)

// Errors that stop Run for good: retrying would not help.
var (
	// ErrRevoked: the hub refuses the device's certificate and would not
	// issue another one.
	ErrRevoked = errors.New("edge: the hub refuses this device's certificate (revoked?) and refused a new enrollment")
	// ErrRefused: the hub refuses the device's login or activation.
	ErrRefused = errors.New("edge: the hub refuses this device")
)

// errReconnect ends a session on purpose (reboot request, renewed certificate).
var errReconnect = errors.New("edge: reconnect requested")

// Slot names in the key store.
const (
	slotCurrent = "current"
	slotNext    = "next"
)

// Agent runs the device flow. Create it with New.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	state    *State
	ks       KeyStore
	ownKS    bool
	caPEM    []byte
	trusted  atomic.Pointer[trustState] // roots, bundle CAs and their CRLs; replaced whole on refresh
	broker   string
	brokerTL bool
	buf      *Buffer

	mu        sync.Mutex
	client    mqtt.Client // the live session, nil while offline
	secret    string
	setPoints map[string]any
	last      map[string]any // the latest measurepoints, for measurepoint get
	key       crypto.Signer  // the current key, opened once (a sealed key costs an scrypt)
	pending   map[string]chan reply
	nextID    atomic.Uint64
	reconnect chan struct{}
	renewNow  chan struct{} // the certificate's CA is no longer active: renew in the live session
	trustNow  chan struct{} // the hub said its CAs changed: refresh the trust
}

type reply struct {
	Code    int             `json:"code"`
	Data    json.RawMessage `json:"data"`
	Message string          `json:"message"`
}

// New checks cfg, opens the state directory and the key store. Nothing
// is sent to the hub before Run.
func New(cfg Config) (*Agent, error) {
	cfg, err := cfg.check()
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:       cfg,
		log:       cfg.Logger.With("productKey", cfg.ProductKey, "deviceKey", cfg.DeviceKey),
		setPoints: map[string]any{},
		pending:   map[string]chan reply{},
		reconnect: make(chan struct{}, 1),
		renewNow:  make(chan struct{}, 1),
		trustNow:  make(chan struct{}, 1),
	}
	a.broker, a.brokerTL, _ = brokerURL(cfg.Broker)
	if a.state, err = OpenState(cfg.StateDir); err != nil {
		return nil, err
	}
	a.trusted.Store(&trustState{})
	if cfg.CAFile != "" {
		a.caPEM, err = os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("edge: pinned CA: %w", err)
		}
		// A bundle accepted before (signed by a CA the agent trusted then)
		// takes the pinned file's place.
		trustPEM := a.caPEM
		if b, err := a.state.Read(FileTrustBundle); err == nil && b != "" {
			trustPEM = []byte(b)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(trustPEM) {
			return nil, fmt.Errorf("edge: pinned CA file %s holds no certificate", cfg.CAFile)
		}
		a.trusted.Store(&trustState{roots: roots, pem: trustPEM})
	}
	a.ks = cfg.KeyStore
	if a.ks == nil {
		a.ks = &FileKeyStore{Dir: cfg.StateDir, Passphrase: cfg.Passphrase}
		a.ownKS = true
	}
	a.buf = &Buffer{Path: a.state.path(FileBuffer), MaxBytes: cfg.BufferBytes}
	return a, nil
}

// Close releases the key store if the agent opened it.
func (a *Agent) Close() error {
	if a.ownKS {
		return a.ks.Close()
	}
	return nil
}

// Buffered reports how many measurepoint posts wait on disk.
func (a *Agent) Buffered() int { return a.buf.Len() }

func (a *Agent) emit(state string) {
	if a.cfg.OnState != nil {
		a.cfg.OnState(state)
	}
}

func (a *Agent) deviceClient(secret string) *DeviceClient {
	return &DeviceClient{
		API: a.cfg.API, ProductKey: a.cfg.ProductKey, DeviceKey: a.cfg.DeviceKey,
		DeviceSecret: secret, HTTP: NewHTTPClient(a.trust().roots),
	}
}

func (a *Agent) checkClock() error { return CheckClock(time.Now(), a.caPEM) }

// sleep waits d or until ctx ends; it reports whether to go on.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Run runs the device flow until ctx ends (then it returns nil) or the
// hub refuses the device for good (ErrRefused, ErrRevoked) or the clock
// guard trips (ErrClock).
func (a *Agent) Run(ctx context.Context) error {
	defer a.emit("stopped")
	if err := a.checkClock(); err != nil {
		return err
	}
	if err := a.ensureSecret(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	collectCtx, stopCollect := context.WithCancel(ctx)
	collected := make(chan struct{}, 2)
	loops := 1
	go func() {
		defer func() { collected <- struct{}{} }()
		a.collectLoop(collectCtx)
	}()
	if a.cfg.TrustRefresh > 0 && a.cfg.API != "" && a.trust().roots != nil {
		// At start, before enrolling: after a CA rollover a certificate
		// from the new CA must be checked against the new bundle.
		a.refreshTrustLogged(ctx)
		loops++
		go func() {
			defer func() { collected <- struct{}{} }()
			a.trustLoop(collectCtx)
		}()
	}
	defer func() {
		stopCollect()
		for range loops {
			<-collected
		}
	}()
	bo := Backoff{Min: a.cfg.BackoffMin, Max: a.cfg.BackoffMax}
	retriedEnroll, refusals := false, 0
	for ctx.Err() == nil {
		if err := a.checkClock(); err != nil {
			return err
		}
		if a.cfg.Auth == AuthCertificate {
			if err := a.ensureCert(ctx, false); err != nil {
				var he *HubError
				if errors.As(err, &he) && he.Refused() {
					return fmt.Errorf("%w: enrollment refused: %v", ErrRefused, err)
				}
				if ctx.Err() != nil {
					return nil
				}
				a.log.Warn("enrollment failed, will retry", "err", err)
				sleep(ctx, bo.Next())
				continue
			}
		}
		connected, err := a.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if connected {
			bo.Reset()
			retriedEnroll, refusals = false, 0
			if errors.Is(err, errReconnect) {
				continue
			}
			a.log.Warn("disconnected", "err", err)
			sleep(ctx, bo.Next())
			continue
		}
		if !refused(err) {
			d := bo.Next()
			a.log.Warn("connect failed, will retry", "err", err, "in", d.Round(time.Millisecond))
			sleep(ctx, d)
			continue
		}
		if a.cfg.Auth != AuthCertificate {
			// As for activation, 3.1.1 has one code for throttling too:
			// the third refusal in a row is final.
			if refusals++; refusals < 3 {
				d := bo.Next()
				a.log.Warn("login refused, will retry", "err", err, "in", d.Round(time.Millisecond))
				sleep(ctx, d)
				continue
			}
			return fmt.Errorf("%w: login refused (%v); check the DeviceSecret in %s and that the device is enabled", ErrRefused, err, a.state.Dir)
		}
		if retriedEnroll {
			return fmt.Errorf("%w: %v", ErrRevoked, err)
		}
		retriedEnroll = true
		a.log.Warn("the hub refused our certificate or login, perhaps revoked: enrolling once more", "err", err)
		if err := a.ensureCert(ctx, true); err != nil {
			var he *HubError
			if errors.As(err, &he) && he.Refused() {
				return fmt.Errorf("%w: %v", ErrRevoked, err)
			}
			retriedEnroll = false
			a.log.Warn("enrollment failed, will retry", "err", err)
			sleep(ctx, bo.Next())
		}
	}
	return nil
}

// refused reports whether a connect error is the hub saying no (as opposed
// to a network failure): CONNACK 4 or 5, or a TLS alert about our certificate.
func refused(err error) bool {
	if err == nil {
		return false
	}
	var re *refusal
	if errors.As(err, &re) {
		return true
	}
	s := strings.ToLower(err.Error())
	for _, m := range []string{"bad certificate", "certificate revoked", "revoked certificate", "unknown certificate", "certificate required", "expired certificate", "unsupported certificate"} {
		if strings.Contains(s, m) {
			return true
		}
	}
	return false
}

// refusal is a CONNACK refusal.
type refusal struct {
	code byte
	err  error
}

func (r *refusal) Error() string { return fmt.Sprintf("CONNACK refused (%d %v)", r.code, r.err) }

// connect opens an MQTT session with the given credentials.
func (a *Agent) connect(ctx context.Context, mode int, secret string, withCert bool, onMsg mqtt.MessageHandler, lost chan<- error) (mqtt.Client, error) {
	ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
	cid, user, pass, err := sign.Credentials(a.cfg.DeviceKey, a.cfg.ProductKey, a.cfg.DeviceKey, secret, mode, sign.SHA256, ts)
	if err != nil {
		return nil, err
	}
	opts := mqtt.NewClientOptions().AddBroker(a.broker).
		SetClientID(cid).SetUsername(user).SetPassword(pass).
		SetProtocolVersion(4).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(false).
		SetKeepAlive(30 * time.Second).SetPingTimeout(10 * time.Second).
		SetConnectTimeout(15 * time.Second).SetWriteTimeout(15 * time.Second).
		SetDefaultPublishHandler(onMsg)
	if lost != nil {
		opts.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	}
	if a.brokerTL {
		tc := &tls.Config{RootCAs: a.trust().roots, MinVersion: tls.VersionTLS12, VerifyConnection: a.serverRevoked}
		if withCert {
			cert, err := a.tlsCertificate()
			if err != nil {
				return nil, err
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		opts.SetTLSConfig(tc)
	}
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		c.Disconnect(0)
		return nil, ctx.Err()
	case <-time.After(30 * time.Second):
		c.Disconnect(0)
		return nil, errors.New("edge: connect timed out")
	}
	if err := tok.Error(); err != nil {
		if ct, ok := tok.(*mqtt.ConnectToken); ok {
			if rc := ct.ReturnCode(); rc == 4 || rc == 5 {
				return nil, &refusal{code: rc, err: err}
			}
		}
		return nil, err
	}
	return c, nil
}

// tlsCertificate is the client certificate with its chain (without the
// self-signed root) and the key store's signer.
func (a *Agent) tlsCertificate() (tls.Certificate, error) {
	key, err := a.currentKey()
	if err != nil {
		return tls.Certificate{}, err
	}
	certPEM, err := a.state.Read(FileCert)
	if err != nil {
		return tls.Certificate{}, err
	}
	chainPEM, err := a.state.Read(FileCAChain)
	if err != nil {
		return tls.Certificate{}, err
	}
	var out tls.Certificate
	for rest := []byte(certPEM + "\n" + chainPEM); ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return tls.Certificate{}, err
		}
		if len(out.Certificate) > 0 && bytes.Equal(c.RawIssuer, c.RawSubject) {
			continue // the hub has its root
		}
		if out.Leaf == nil {
			out.Leaf = c
		}
		out.Certificate = append(out.Certificate, b.Bytes)
	}
	if out.Leaf == nil {
		return tls.Certificate{}, errors.New("edge: no device certificate stored")
	}
	out.PrivateKey = key
	return out, nil
}

// ensureCert makes sure a valid certificate matching the current key is
// stored, enrolling a fresh key when there is none (or always with force).
func (a *Agent) ensureCert(ctx context.Context, force bool) error {
	if !force {
		cert, err := a.state.Certificate()
		if err != nil {
			a.log.Warn("stored certificate unreadable, enrolling again", "err", err)
		}
		key, kerr := a.currentKey()
		if kerr != nil && !errors.Is(kerr, ErrNoKey) {
			return kerr
		}
		now := time.Now()
		if cert != nil && key != nil && now.After(cert.NotBefore) && now.Before(cert.NotAfter) && samePublicKey(cert.PublicKey, key.Public()) {
			return nil
		}
	}
	a.setKey(nil)
	key, err := a.ks.Create(slotCurrent, a.cfg.KeyType)
	if err != nil {
		return err
	}
	a.setKey(key)
	csr, err := NewCSR(key, a.cfg.ProductKey, a.cfg.DeviceKey)
	if err != nil {
		return err
	}
	iss, err := a.deviceClient(a.deviceSecret()).Enroll(ctx, csr)
	if err != nil {
		return err
	}
	cert, err := a.checkIssued(key, iss.Cert, iss.CAChain)
	if err != nil {
		return err
	}
	if err := a.writeIssued(cert, iss.Serial, iss.Cert, iss.CAChain); err != nil {
		return err
	}
	a.log.Info("enrolled", "serial", iss.Serial, "notAfter", iss.NotAfter)
	a.emit("enrolled")
	return nil
}

// currentKey returns the signer of the current key, opening it once.
func (a *Agent) currentKey() (crypto.Signer, error) {
	a.mu.Lock()
	k := a.key
	a.mu.Unlock()
	if k != nil {
		return k, nil
	}
	k, err := a.ks.Open(slotCurrent)
	if err != nil {
		return nil, err
	}
	a.setKey(k)
	return k, nil
}

func (a *Agent) setKey(k crypto.Signer) {
	a.mu.Lock()
	a.key = k
	a.mu.Unlock()
}

func samePublicKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// checkIssued checks that an issued certificate is for key and chains to
// the pinned CA.
func (a *Agent) checkIssued(key crypto.Signer, certPEM, chainPEM string) (*x509.Certificate, error) {
	block, _ := pem.Decode([]byte(certPEM))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("edge: the hub's certificate is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("edge: the hub's certificate: %w", err)
	}
	if !samePublicKey(cert.PublicKey, key.Public()) {
		return nil, errors.New("edge: the hub's certificate is not for our key")
	}
	inter := x509.NewCertPool()
	inter.AppendCertsFromPEM([]byte(chainPEM))
	if _, err := cert.Verify(x509.VerifyOptions{Roots: a.trust().roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("edge: the hub's certificate does not chain to the pinned CA: %w", err)
	}
	return cert, nil
}

// writeIssued stores a checked certificate with its chain and serial.
func (a *Agent) writeIssued(cert *x509.Certificate, serial, certPEM, chainPEM string) error {
	if serial == "" {
		serial = fmt.Sprintf("%x", cert.SerialNumber)
	}
	if err := a.state.Write(FileCert, certPEM); err != nil {
		return err
	}
	if err := a.state.Write(FileCAChain, chainPEM); err != nil {
		return err
	}
	return a.state.Write(FileSerial, strings.ToLower(serial))
}

func (a *Agent) topic(suffix string) string {
	return "/sys/" + a.cfg.ProductKey + "/" + a.cfg.DeviceKey + "/" + suffix
}

// session connects, serves and posts until the connection ends. connected
// reports whether the login succeeded.
func (a *Agent) session(ctx context.Context) (connected bool, err error) {
	lost := make(chan error, 1)
	c, err := a.connect(ctx, sign.ModeStatic, a.deviceSecret(), a.cfg.Auth == AuthCertificate, a.onMessage, lost)
	if err != nil {
		return false, err
	}
	defer func() {
		c.Disconnect(250)
		a.emit("offline")
	}()
	a.log.Info("online", "broker", a.broker, "auth", a.cfg.Auth)
	a.emit("online")

	var renewC <-chan time.Time
	renewTimer := time.NewTimer(time.Hour)
	renewTimer.Stop()
	defer renewTimer.Stop()
	if a.cfg.Auth == AuthCertificate {
		if t := c.Subscribe(a.topic("thing/certificate/renew_reply"), 1, nil); t.WaitTimeout(10*time.Second) && t.Error() != nil {
			a.log.Warn("subscribe to renew replies failed", "err", t.Error())
		}
		if cert, err := a.state.Certificate(); err == nil && cert != nil {
			life := cert.NotAfter.Sub(cert.NotBefore)
			at := cert.NotBefore.Add(time.Duration(float64(life) * a.cfg.RenewFraction))
			renewTimer.Reset(max(time.Until(at), 0))
			renewC = renewTimer.C
		}
	}

	a.setClient(c)
	defer a.setClient(nil)
	if n, err := a.buf.Drain(func(r Record) error { return a.publish(c, "thing/measurepoint/resume", "thing.measurepoint.resume", r) }); n > 0 || err != nil {
		a.log.Info("resumed buffered measurepoints", "sent", n, "left", a.buf.Len(), "err", err)
	}

	for {
		select {
		case <-ctx.Done():
			return true, nil
		case err := <-lost:
			return true, fmt.Errorf("connection lost: %w", err)
		case <-a.reconnect:
			return true, errReconnect
		case <-a.renewNow:
			renewTimer.Reset(0)
		case <-renewC:
			if err := a.renew(ctx, c); err != nil {
				a.log.Warn("certificate renewal failed, will retry", "err", err)
				renewTimer.Reset(min(a.cfg.BackoffMax, time.Minute))
				continue
			}
			// Reconnect so the hub sees the new certificate in use.
			return true, errReconnect
		}
	}
}

func (a *Agent) collect(ctx context.Context) (map[string]any, error) {
	var m map[string]any
	var err error
	if a.cfg.Metrics != nil {
		m, err = a.cfg.Metrics(ctx)
	} else {
		m, err = SystemMetrics()
	}
	if err != nil {
		return nil, err
	}
	if m == nil {
		m = map[string]any{}
	}
	a.mu.Lock()
	for k, v := range a.setPoints {
		if _, ok := m[k]; !ok {
			m[k] = v
		}
	}
	a.last = m
	a.mu.Unlock()
	return m, nil
}

func (a *Agent) setClient(c mqtt.Client) {
	a.mu.Lock()
	a.client = c
	a.mu.Unlock()
}

// collectLoop takes measurepoints every interval, online or not, until
// ctx ends.
func (a *Agent) collectLoop(ctx context.Context) {
	tick := time.NewTicker(a.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			a.postOnce(ctx)
		}
	}
}

// postOnce posts one set of measurepoints, or buffers them on disk while
// offline or when the post is not acknowledged.
func (a *Agent) postOnce(ctx context.Context) {
	m, err := a.collect(ctx)
	if err != nil {
		a.log.Warn("measurepoints", "err", err)
		return
	}
	r := Record{Measurepoints: m, Time: time.Now().UnixMilli()}
	a.mu.Lock()
	c := a.client
	a.mu.Unlock()
	if c != nil {
		err = a.publish(c, "thing/measurepoint/post", "thing.measurepoint.post", r)
		if err == nil {
			return
		}
		a.log.Warn("post failed, buffering", "err", err)
	}
	if err := a.buf.Append(r); err != nil {
		a.log.Error("buffer", "err", err)
	}
}

func (a *Agent) newID() string { return strconv.FormatUint(a.nextID.Add(1), 10) }

func (a *Agent) publish(c mqtt.Client, suffix, method string, params any) error {
	b, err := json.Marshal(map[string]any{"id": a.newID(), "version": "1.0", "method": method, "params": params})
	if err != nil {
		return err
	}
	t := c.Publish(a.topic(suffix), 1, false, b)
	if !t.WaitTimeout(10 * time.Second) {
		return errors.New("edge: publish not acknowledged within 10s")
	}
	return t.Error()
}

// Reset asks the hub to revoke the device's certificate (signed with the
// DeviceSecret), then wipes the keys, secrets and certificate from the
// state dir. If the revocation fails, nothing is wiped unless force is set:
// a key must not be forgotten while the hub still trusts it.
func (a *Agent) Reset(ctx context.Context, force bool) error {
	if err := a.checkClock(); err != nil && !force {
		return err
	}
	serial, err := a.state.Read(FileSerial)
	if err != nil {
		return err
	}
	if serial == "" {
		if cert, err := a.state.Certificate(); err == nil && cert != nil {
			serial = fmt.Sprintf("%x", cert.SerialNumber)
		}
	}
	if serial != "" {
		secret, _ := a.state.Read(FileDeviceSecret)
		if secret == "" {
			secret = a.cfg.DeviceSecret
		}
		var rerr error
		if secret == "" {
			rerr = errors.New("edge: no DeviceSecret to sign the revocation with")
		} else if a.cfg.API == "" || a.trust().roots == nil {
			rerr = errors.New("edge: the API URL and the pinned CA are needed to revoke the certificate")
		} else {
			rerr = a.deviceClient(secret).Revoke(ctx, serial)
			var he *HubError
			if errors.As(rerr, &he) && he.Status == 409 {
				rerr = nil // already revoked
			}
		}
		if rerr != nil {
			if !force {
				return fmt.Errorf("%w (nothing wiped; use force to wipe anyway)", rerr)
			}
			a.log.Warn("revocation failed; wiping anyway as forced", "err", rerr)
		} else {
			a.log.Info("certificate revoked", "serial", serial)
		}
	}
	return errors.Join(a.ks.Destroy(), a.state.Wipe())
}
