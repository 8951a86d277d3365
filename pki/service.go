package pki

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"hash/maphash"
	"log/slog"
	"maps"
	"math/big"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iothub/iothub"
)

// Policy of the service.
const (
	// MaxValidPerDevice is how many valid (unrevoked, unexpired)
	// certificates one device may hold at once, to allow rotation.
	MaxValidPerDevice = 3
	// RenewGrace is how long the certificates a renewal supersedes stay
	// valid when the new certificate is not used.
	RenewGrace = 24 * time.Hour
	// CRLValidity is the span between a CRL's thisUpdate and nextUpdate;
	// the CRL is re-signed every CRLValidity/2.
	CRLValidity = 24 * time.Hour
	// OCSPValidity is the span between an OCSP response's thisUpdate and nextUpdate.
	OCSPValidity = time.Hour
	// tickEvery paces the background loop (CRL re-signing, grace periods).
	tickEvery = time.Minute
)

// Service is the hub's certificate service: it implements
// iothub.CertificateService on an Authority, a CertStore and a Bus. The
// revocation state and verified external CAs live in memory for the TLS
// path and in the store for good.
type Service struct {
	a     *Authority
	store iothub.CertStore
	bus   iothub.Bus
	log   *slog.Logger
	now   func() time.Time

	// revoked maps serial → revocation of hub-issued certificates. It is
	// copied on write (under mu) so the TLS path reads it without a lock.
	revoked atomic.Pointer[revokedSet]
	// heard holds serials another node announced as revoked while the
	// store read that confirms them is under way, so the TLS path refuses
	// them at once. Copied on write under mu, like revoked.
	heard    atomic.Pointer[map[string]struct{}]
	mu       sync.RWMutex
	external map[string]*x509.CertPool // productKey → its verified external CAs
	pending  map[string]pendingRenewal // new serial → what it supersedes
	crl      atomic.Pointer[signedCRL] // current CRL
	crlSign  sync.Mutex                // one CRL signing at a time, so a newer never loses to an older

	seed     maphash.Seed
	devLocks [64]sync.Mutex // striped per device: the valid-certificate cap is checked and kept under it

	unsubscribe func()
	loads       sync.WaitGroup // revocations being loaded after a bus event
	closed      bool           // under mu: Close has begun waiting for loads
	stop        chan struct{}
	done        chan struct{}
	closeOnce   sync.Once
}

type revokedEntry struct {
	serial   *big.Int
	at       time.Time
	reason   int
	notAfter time.Time
}

type revokedSet = map[string]revokedEntry

type pendingRenewal struct {
	productKey, deviceKey string
	supersedes            []string
	due                   time.Time
}

type signedCRL struct {
	der      []byte
	signedAt time.Time
}

var _ iothub.CertificateService = (*Service)(nil)

// NewService loads the revoked certificates and verified external CAs
// into memory, signs a CRL, and starts the background loop that re-signs
// the CRL before its nextUpdate and revokes certificates superseded by a
// renewal once the grace period ends. Close stops the loop. External CAs
// are loaded for every product when the store can list products
// (iothub.ProductStore).
func NewService(a *Authority, store iothub.CertStore, bus iothub.Bus, logger *slog.Logger) (*Service, error) {
	if a == nil || store == nil || bus == nil {
		return nil, errors.New("pki: NewService needs an authority, a store and a bus")
	}
	if logger == nil {
		logger = slog.Default()
	}
	s := &Service{
		a:        a,
		store:    store,
		bus:      bus,
		log:      logger,
		now:      time.Now,
		external: map[string]*x509.CertPool{},
		pending:  map[string]pendingRenewal{},
		seed:     maphash.MakeSeed(),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	revoked, err := store.RevokedCertificates(ctx)
	if err != nil {
		return nil, err
	}
	s.revoked.Store(&revokedSet{})
	s.heard.Store(&map[string]struct{}{})
	s.remember(revoked...)
	if err := s.loadExternalCAs(ctx); err != nil {
		return nil, err
	}
	if err := s.signCRL(); err != nil {
		return nil, err
	}
	s.unsubscribe = bus.Subscribe(s.onEvent)
	go s.loop()
	return s, nil
}

// Close stops the background loop and the bus subscription.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		s.unsubscribe()
		close(s.stop)
		<-s.done
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.loads.Wait()
	})
	return nil
}

func (s *Service) loop() {
	defer close(s.done)
	t := time.NewTicker(tickEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.tick(s.now())
		}
	}
}

// tick does the periodic work due at now.
func (s *Service) tick(now time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s.supersedeDue(ctx, now)
	if cur := s.crl.Load(); cur == nil || now.Sub(cur.signedAt) >= CRLValidity/2 {
		if err := s.signCRL(); err != nil {
			s.log.Error("pki: re-sign CRL", "err", err)
		}
	}
}

// onEvent keeps the revoked set in step with revocations made by other
// hub nodes sharing the store. It must not block: it loads in a goroutine.
func (s *Service) onEvent(e iothub.Event) {
	if e.Kind == iothub.EventCAChanged && e.ProductKey != "" {
		s.load(func(ctx context.Context) {
			if err := s.loadProductCAs(ctx, e.ProductKey); err != nil {
				s.log.Error("pki: reload external CAs", "productKey", e.ProductKey, "err", err)
			}
		})
		return
	}
	if e.Kind != iothub.EventCertRevoked || e.Serial == "" || s.IsRevoked(e.Serial) {
		return
	}
	// Refuse the serial from now on: a device reconnecting to this node
	// before the store read below must not get back in.
	s.setHeard(e.Serial, true)
	s.load(func(ctx context.Context) {
		defer s.setHeard(e.Serial, false)
		c, err := s.store.Certificate(ctx, e.Serial)
		if err != nil || c.RevokedAt == nil {
			return // not revoked after all: the announcement alone does not count
		}
		if s.remember(c) {
			if err := s.signCRL(); err != nil {
				s.log.Error("pki: sign CRL", "err", err)
			}
		}
	})
}

// load runs fn, a store read after a bus event, in its own goroutine
// unless Close has begun; Close waits for it.
func (s *Service) load(fn func(ctx context.Context)) {
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.loads.Add(1)
	}
	s.mu.Unlock()
	if closed {
		return
	}
	go func() {
		defer s.loads.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		fn(ctx)
	}()
}

// remember adds revoked certificates to the in-memory set and reports
// whether any was new there.
func (s *Service) remember(certs ...*iothub.Certificate) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.revoked.Load()
	var set revokedSet
	for _, c := range certs {
		n, ok := new(big.Int).SetString(c.Serial, 16)
		if !ok || c.RevokedAt == nil {
			continue
		}
		if _, dup := old[c.Serial]; dup {
			continue
		}
		if set == nil {
			set = maps.Clone(old)
		}
		set[c.Serial] = revokedEntry{serial: n, at: *c.RevokedAt, reason: reasonCodes[c.Reason], notAfter: c.NotAfter}
		delete(s.pending, c.Serial)
	}
	if set == nil {
		return false
	}
	s.revoked.Store(&set)
	return true
}

// signCRL signs a CRL of every revoked certificate that has not expired
// and makes it current. Expired entries leave the set: a certificate past
// its notAfter is refused for that reason alone.
func (s *Service) signCRL() error {
	s.crlSign.Lock()
	defer s.crlSign.Unlock()
	now := s.now()
	s.mu.Lock()
	set := *s.revoked.Load()
	entries := make([]x509.RevocationListEntry, 0, len(set))
	var kept revokedSet
	for k, e := range set {
		if now.After(e.notAfter) {
			if kept == nil {
				kept = maps.Clone(set)
			}
			delete(kept, k)
			continue
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: e.serial, RevocationTime: e.at, ReasonCode: e.reason})
	}
	if kept != nil {
		s.revoked.Store(&kept)
	}
	s.mu.Unlock()
	slices.SortFunc(entries, func(x, y x509.RevocationListEntry) int { return x.SerialNumber.Cmp(y.SerialNumber) })
	der, err := s.a.signCRL(entries, now, now.Add(CRLValidity))
	if err != nil {
		return err
	}
	s.crl.Store(&signedCRL{der: der, signedAt: now})
	return nil
}

// CRL is the issuing CA's current CRL in DER.
func (s *Service) CRL() []byte { return bytes.Clone(s.crl.Load().der) }

// ChainPEM is the chain devices trust: the issuing CA then the root.
func (s *Service) ChainPEM() []byte { return s.a.ChainPEM() }

// IsRevoked reports from memory whether the hub-issued certificate with
// serial (lower-case hex) is revoked.
func (s *Service) IsRevoked(serial string) bool {
	if _, ok := (*s.revoked.Load())[serial]; ok {
		return true
	}
	_, heard := (*s.heard.Load())[serial]
	return heard
}

// setHeard adds serial to, or removes it from, the announced-revoked set.
func (s *Service) setHeard(serial string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := maps.Clone(*s.heard.Load())
	if on {
		set[serial] = struct{}{}
	} else {
		delete(set, serial)
	}
	s.heard.Store(&set)
}

// Enroll checks csrPEM, issues a certificate for d valid for validDays
// (0 or more than the product allows: the product's maximum) and stores
// it bound to d.
func (s *Service) Enroll(ctx context.Context, p *iothub.Product, d *iothub.Device, csrPEM string, validDays int) (*iothub.Certificate, error) {
	return s.enroll(ctx, p, d, csrPEM, validDays, false)
}

// Renew issues a successor certificate for d valid for the product's
// maximum. The device's certificates that were valid before are revoked
// as superseded once the new one is used (NoteUsed) or after RenewGrace.
func (s *Service) Renew(ctx context.Context, p *iothub.Product, d *iothub.Device, csrPEM string) (*iothub.Certificate, error) {
	return s.enroll(ctx, p, d, csrPEM, 0, true)
}

func (s *Service) enroll(ctx context.Context, p *iothub.Product, d *iothub.Device, csrPEM string, validDays int, renew bool) (*iothub.Certificate, error) {
	if p == nil || d == nil || d.ProductKey != p.ProductKey {
		return nil, iothub.Errorf(iothub.EINVALID, "device does not belong to the product")
	}
	if validDays < 0 {
		return nil, iothub.Errorf(iothub.EINVALID, "validDays must not be negative")
	}
	csr, err := ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	keyHash := spkiHash(csr.RawSubjectPublicKeyInfo)

	lock := s.deviceLock(p.ProductKey, d.DeviceKey)
	lock.Lock()
	defer lock.Unlock()
	now := s.now()
	prev, err := s.store.CertificateByPublicKey(ctx, keyHash)
	switch {
	case err == nil:
		if prev.ProductKey != p.ProductKey || prev.DeviceKey != d.DeviceKey {
			return nil, iothub.Errorf(iothub.ECONFLICT, "public key is bound to another device")
		}
		if prev.Reason == "keyCompromise" {
			return nil, iothub.Errorf(iothub.ECONFLICT, "public key was revoked as compromised; generate a new key")
		}
	case iothub.ErrorCode(err) != iothub.ENOTFOUND:
		return nil, err
	}
	certs, err := s.store.CertificatesByDevice(ctx, p.ProductKey, d.DeviceKey)
	if err != nil {
		return nil, err
	}
	var valid []string
	for _, c := range certs {
		if c.Status(now) == "valid" {
			valid = append(valid, c.Serial)
		}
	}
	if len(valid) >= MaxValidPerDevice {
		return nil, iothub.Errorf(iothub.ECONFLICT, "device already holds %d valid certificates; revoke one first", len(valid))
	}
	days := p.MaxCertDays
	if days <= 0 {
		days = iothub.DefaultMaxCertDays
	}
	if validDays > 0 && validDays < days {
		days = validDays
	}
	leaf, err := s.a.issueDevice(csr, p.ProductKey, d.DeviceKey, now.Add(-time.Minute), now.AddDate(0, 0, days))
	if err != nil {
		// The keys are validated, but a key the URI cannot carry still lands here.
		return nil, iothub.Errorf(iothub.EINVALID, "cannot issue a certificate naming this device: %v", err)
	}
	c := &iothub.Certificate{
		Serial:          serialHex(leaf.SerialNumber),
		OrgID:           p.OrgID,
		ProductKey:      p.ProductKey,
		DeviceKey:       d.DeviceKey,
		PublicKeySHA256: keyHash,
		CertPEM:         string(pemCert(leaf.Raw)),
		NotBefore:       leaf.NotBefore,
		NotAfter:        leaf.NotAfter,
		CreatedAt:       now,
	}
	if err := s.store.CreateCertificate(ctx, c); err != nil {
		return nil, err
	}
	if renew && len(valid) > 0 {
		s.mu.Lock()
		s.pending[c.Serial] = pendingRenewal{productKey: p.ProductKey, deviceKey: d.DeviceKey, supersedes: valid, due: now.Add(RenewGrace)}
		s.mu.Unlock()
	}
	s.log.Info("pki: certificate issued", "serial", c.Serial, "productKey", c.ProductKey, "deviceKey", c.DeviceKey, "renewal", renew)
	return c, nil
}

func (s *Service) deviceLock(pk, dk string) *sync.Mutex {
	var h maphash.Hash
	h.SetSeed(s.seed)
	h.WriteString(pk)
	h.WriteByte(0)
	h.WriteString(dk)
	return &s.devLocks[h.Sum64()%uint64(len(s.devLocks))]
}

// NoteUsed tells the service certificate serial logged in: the
// certificates its renewal superseded are revoked now.
func (s *Service) NoteUsed(ctx context.Context, serial string) {
	s.mu.RLock() // every certificate login comes here; most find nothing
	_, found := s.pending[serial]
	s.mu.RUnlock()
	if !found {
		return
	}
	s.mu.Lock()
	pr, ok := s.pending[serial]
	delete(s.pending, serial)
	s.mu.Unlock()
	if ok {
		s.supersede(ctx, serial, pr)
	}
}

// supersedeDue revokes what renewals superseded once their grace ended.
func (s *Service) supersedeDue(ctx context.Context, now time.Time) {
	due := map[string]pendingRenewal{}
	s.mu.Lock()
	for serial, pr := range s.pending {
		if !now.Before(pr.due) {
			due[serial] = pr
			delete(s.pending, serial)
		}
	}
	s.mu.Unlock()
	for serial, pr := range due {
		s.supersede(ctx, serial, pr)
	}
}

func (s *Service) supersede(ctx context.Context, by string, pr pendingRenewal) {
	for _, old := range pr.supersedes {
		_, err := s.Revoke(ctx, old, "superseded")
		switch iothub.ErrorCode(err) {
		case "", iothub.ECONFLICT:
		default:
			s.log.Error("pki: revoke superseded certificate", "serial", old, "by", by, "err", err)
		}
	}
}

// Revoke revokes the certificate with serial for reason, an RFC 5280
// reason name. It persists the revocation, adds it to the in-memory set,
// signs a new CRL and publishes EventCertRevoked.
func (s *Service) Revoke(ctx context.Context, serial, reason string) (*iothub.Certificate, error) {
	if _, ok := reasonCodes[reason]; !ok {
		if reason == "removeFromCRL" {
			return nil, iothub.Errorf(iothub.EINVALID, "reason removeFromCRL is for delta CRLs and cannot be used to revoke")
		}
		return nil, iothub.Errorf(iothub.EINVALID, "unknown revocation reason %q; use an RFC 5280 name such as keyCompromise, superseded or cessationOfOperation", reason)
	}
	serial, err := normalizeSerial(serial)
	if err != nil {
		return nil, err
	}
	c, err := s.store.Certificate(ctx, serial)
	if err != nil {
		return nil, err
	}
	if c.RevokedAt != nil {
		return nil, iothub.Errorf(iothub.ECONFLICT, "certificate %s is already revoked", serial)
	}
	now := s.now()
	if err := s.store.RevokeCertificate(ctx, serial, reason, now); err != nil {
		return nil, err
	}
	c.RevokedAt, c.Reason = &now, reason
	s.remember(c)
	if err := s.signCRL(); err != nil {
		// The revocation holds (memory and store); the loop retries the CRL.
		s.log.Error("pki: sign CRL after revocation", "serial", serial, "err", err)
	}
	if err := s.bus.Publish(ctx, iothub.Event{Kind: iothub.EventCertRevoked, ProductKey: c.ProductKey, DeviceKey: c.DeviceKey, Serial: serial, Reason: reason}); err != nil {
		s.log.Error("pki: publish revocation", "serial", serial, "err", err)
	}
	s.log.Info("pki: certificate revoked", "serial", serial, "productKey", c.ProductKey, "deviceKey", c.DeviceKey, "reason", reason)
	return c, nil
}

// Certificate returns the certificate with serial.
func (s *Service) Certificate(ctx context.Context, serial string) (*iothub.Certificate, error) {
	serial, err := normalizeSerial(serial)
	if err != nil {
		return nil, err
	}
	return s.store.Certificate(ctx, serial)
}

// Certificates lists a device's certificates.
func (s *Service) Certificates(ctx context.Context, productKey, deviceKey string) ([]*iothub.Certificate, error) {
	return s.store.CertificatesByDevice(ctx, productKey, deviceKey)
}

// normalizeSerial accepts hex in either case (at most 40 digits, RFC 5280's
// 20 octets) and returns the hub's form: lower case, no leading zeros.
func normalizeSerial(serial string) (string, error) {
	if serial == "" || len(serial) > 40 {
		return "", iothub.Errorf(iothub.EINVALID, "serial must be 1 to 40 hex digits")
	}
	n, ok := new(big.Int).SetString(serial, 16)
	if !ok || n.Sign() < 0 || strings.ContainsAny(serial, "+-") {
		return "", iothub.Errorf(iothub.EINVALID, "serial must be hex digits")
	}
	return serialHex(n), nil
}

// parseCertPEM parses exactly one PEM certificate of at most MaxPEMSize bytes.
func parseCertPEM(text, what string) (*x509.Certificate, error) {
	if len(text) > MaxPEMSize {
		return nil, iothub.Errorf(iothub.EINVALID, "%s is larger than %d bytes", what, MaxPEMSize)
	}
	der, err := onePEMBlock([]byte(text), pemTypeCert, what)
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, iothub.Errorf(iothub.EINVALID, "%s is not a valid X.509 certificate", what)
	}
	return c, nil
}
