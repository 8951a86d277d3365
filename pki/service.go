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
	// extRevoked maps productKey → revoked leaves of its external CAs, by
	// externalLeafKey. Replaced whole on change, read under mu.
	extRevoked map[string]map[string]struct{}
	reloadMu   sync.Mutex                            // serializes reloadExternal
	pending    map[string]pendingRenewal             // new serial → what it supersedes
	checked    map[string]struct{}                   // serials storedRenewal asked the store about
	ocspCache  ocspCache                             // signed OCSP responses until their nextUpdate
	crl        atomic.Pointer[map[string]*signedCRL] // current CRL of each issuing CA not retired, by CA id
	crlSign    sync.Mutex                            // one CRL signing at a time, so a newer never loses to an older

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
	// issuer is the id (authority key identifier) of the CA that signed
	// the certificate, "" when unknown: then every CRL lists it.
	issuer   string
	serial   *big.Int
	at       time.Time
	reason   int
	notAfter time.Time
}

type revokedSet = map[string]revokedEntry

type pendingRenewal struct {
	supersedes []string
	due        time.Time
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
		a:          a,
		store:      store,
		bus:        bus,
		log:        logger,
		now:        time.Now,
		external:   map[string]*x509.CertPool{},
		extRevoked: map[string]map[string]struct{}{},
		pending:    map[string]pendingRenewal{},
		checked:    map[string]struct{}{},
		seed:       maphash.MakeSeed(),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
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
	if err := s.loadSupersessions(ctx); err != nil {
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
	if err := s.loadSupersessions(ctx); err != nil {
		s.log.Error("pki: load supersessions", "err", err)
	}
	s.supersedeDue(ctx, now)
	s.renewServer(now)
	if s.crlDue(now) {
		if err := s.signCRL(); err != nil {
			s.log.Error("pki: re-sign CRL", "err", err)
		}
	}
}

// onEvent keeps the revoked set in step with revocations made by other
// hub nodes sharing the store. It must not block: it loads in a goroutine.
func (s *Service) onEvent(e iothub.Event) {
	if e.Kind == iothub.EventCertRenewed {
		s.background(func(ctx context.Context) {
			if err := s.loadSupersessions(ctx); err != nil {
				s.log.Error("pki: load supersessions", "err", err)
			}
		})
		return
	}
	if e.Kind == iothub.EventProductChanged && e.ProductKey != "" {
		s.background(func(ctx context.Context) {
			if err := s.reloadExternal(ctx, e.ProductKey); err != nil {
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
	s.background(func(ctx context.Context) {
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

// background runs fn in a goroutine that Close waits for, unless Close has begun.
func (s *Service) background(fn func(ctx context.Context)) {
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
		set[c.Serial] = revokedEntry{issuer: issuerID(c.CertPEM), serial: n, at: *c.RevokedAt, reason: reasonCodes[c.Reason], notAfter: c.NotAfter}
		delete(s.pending, c.Serial)
		s.ocspCache.drop(c.Serial)
	}
	if set == nil {
		return false
	}
	s.revoked.Store(&set)
	return true
}

// signCRL signs, for each issuing CA not retired, a CRL of every revoked
// certificate it issued that has not expired, and makes them current.
// Expired entries leave the set: a certificate past its notAfter is
// refused for that reason alone.
func (s *Service) signCRL() error {
	s.crlSign.Lock()
	defer s.crlSign.Unlock()
	now := s.now()
	s.mu.Lock()
	set := *s.revoked.Load()
	entries := make([]revokedEntry, 0, len(set))
	var kept revokedSet
	for k, e := range set {
		if now.After(e.notAfter) {
			if kept == nil {
				kept = maps.Clone(set)
			}
			delete(kept, k)
			continue
		}
		entries = append(entries, e)
	}
	if kept != nil {
		s.revoked.Store(&kept)
	}
	s.mu.Unlock()
	slices.SortFunc(entries, func(x, y revokedEntry) int { return x.serial.Cmp(y.serial) })
	crls := map[string]*signedCRL{}
	for _, ca := range s.a.cur.Load().issuingCAs() {
		var list []x509.RevocationListEntry
		for _, e := range entries {
			if e.issuer == "" || e.issuer == ca.ID {
				list = append(list, x509.RevocationListEntry{SerialNumber: e.serial, RevocationTime: e.at, ReasonCode: e.reason})
			}
		}
		der, err := s.a.signCRL(ca, list, now, now.Add(CRLValidity))
		if err != nil {
			return err
		}
		crls[ca.ID] = &signedCRL{der: der, signedAt: now}
	}
	s.crl.Store(&crls)
	return nil
}

// crlDue reports whether the CRLs must be re-signed at now: half their
// validity passed, or the issuing CAs changed since.
func (s *Service) crlDue(now time.Time) bool {
	cur := s.crl.Load()
	if cur == nil {
		return true
	}
	cas := s.a.cur.Load().issuingCAs()
	if len(cas) != len(*cur) {
		return true
	}
	for _, ca := range cas {
		c, ok := (*cur)[ca.ID]
		if !ok || now.Sub(c.signedAt) >= CRLValidity/2 {
			return true
		}
	}
	return false
}

// CRL is the active issuing CA's current CRL in DER.
func (s *Service) CRL() []byte {
	der, _ := s.CRLOf(s.a.cur.Load().issuing.ID)
	return der
}

// CRLOf is the current CRL in DER of the issuing CA with id (not retired),
// the one its certificates name.
func (s *Service) CRLOf(id string) ([]byte, bool) {
	c, ok := (*s.crl.Load())[id]
	if !ok {
		return nil, false
	}
	return bytes.Clone(c.der), true
}

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
	if p == nil || d == nil || d.ProductKey != p.ProductKey || d.AssetID == "" {
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
		if prev.AssetID != d.AssetID {
			return nil, iothub.Errorf(iothub.ECONFLICT, "public key is bound to another device")
		}
		if prev.Reason == "keyCompromise" {
			return nil, iothub.Errorf(iothub.ECONFLICT, "public key was revoked as compromised; generate a new key")
		}
		// F9: an enrollment retried with the same key (a lost answer, a
		// replayed request) gets the certificate already issued, not another.
		if !renew && prev.Status(now) == "valid" {
			return prev, nil
		}
	case iothub.ErrorCode(err) != iothub.ENOTFOUND:
		return nil, err
	}
	certs, err := s.store.CertificatesByAsset(ctx, d.AssetID)
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
		OrgID:           d.OrgID,
		ProductKey:      p.ProductKey,
		DeviceKey:       d.DeviceKey,
		AssetID:         d.AssetID,
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
		due := now.Add(RenewGrace)
		// F8: stored, so a restart or another node still supersedes them.
		if err := s.store.AddSupersessions(ctx, c.Serial, valid, due); err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.pending[c.Serial] = pendingRenewal{supersedes: valid, due: due}
		s.mu.Unlock()
		s.publish(ctx, iothub.Event{Kind: iothub.EventCertRenewed, ProductKey: c.ProductKey, DeviceKey: c.DeviceKey, Serial: c.Serial})
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
		// F8: a renewal made on another node may not have reached this one.
		if pr, ok := s.storedRenewal(ctx, serial); ok {
			s.supersede(ctx, serial, pr)
		}
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

// pendingOf groups stored supersessions by new serial; those whose new
// certificate is revoked are moot and listed apart.
func (s *Service) pendingOf(rows []iothub.Supersession) (map[string]pendingRenewal, []string) {
	pending := map[string]pendingRenewal{}
	var moot []string
	for _, r := range rows {
		if s.IsRevoked(r.New) {
			moot = append(moot, r.New)
			continue
		}
		pr := pending[r.New]
		pr.supersedes = append(pr.supersedes, r.Old)
		pr.due = r.Due
		pending[r.New] = pr
	}
	return pending, moot
}

// storedRenewal asks the store, once per serial and process, whether
// serial is a renewal this node has not loaded yet (made on another node
// a moment ago): the renewal is stored before its certificate is handed
// out, so the first login with it always finds it.
func (s *Service) storedRenewal(ctx context.Context, serial string) (pendingRenewal, bool) {
	s.mu.RLock()
	_, checked := s.checked[serial]
	s.mu.RUnlock()
	if checked {
		return pendingRenewal{}, false
	}
	rows, err := s.store.Supersessions(ctx, serial)
	if err != nil {
		s.log.Error("pki: read supersessions", "serial", serial, "err", err)
		return pendingRenewal{}, false
	}
	s.mu.Lock()
	if len(s.checked) >= maxChecked {
		clear(s.checked)
	}
	s.checked[serial] = struct{}{}
	s.mu.Unlock()
	pending, _ := s.pendingOf(rows)
	pr, ok := pending[serial]
	return pr, ok
}

// maxChecked caps the serials storedRenewal remembers having asked about.
const maxChecked = 100000

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
	done := true
	for _, old := range pr.supersedes {
		_, err := s.Revoke(ctx, old, "superseded")
		switch iothub.ErrorCode(err) {
		case "", iothub.ECONFLICT, iothub.ENOTFOUND:
		default:
			done = false
			s.log.Error("pki: revoke superseded certificate", "serial", old, "by", by, "err", err)
		}
	}
	if !done {
		return // stays stored; the next reload retries
	}
	if err := s.store.DeleteSupersessions(ctx, by); err != nil {
		s.log.Error("pki: forget supersessions", "by", by, "err", err)
	}
}

// loadSupersessions replaces the pending renewals in memory with the
// stored ones, so renewals made before a restart or on another node are
// carried out here too. Those whose new certificate is revoked are moot.
func (s *Service) loadSupersessions(ctx context.Context) error {
	rows, err := s.store.Supersessions(ctx, "")
	if err != nil {
		return err
	}
	pending, moot := s.pendingOf(rows)
	s.mu.Lock()
	s.pending = pending
	s.mu.Unlock()
	for _, serial := range slices.Compact(moot) {
		if err := s.store.DeleteSupersessions(ctx, serial); err != nil {
			return err
		}
	}
	return nil
}

// Revoke revokes the certificate with serial for reason, an RFC 5280
// reason name. It persists the revocation, adds it to the in-memory set,
// signs a new CRL and publishes EventCertRevoked.
func (s *Service) Revoke(ctx context.Context, serial, reason string) (*iothub.Certificate, error) {
	if err := checkReason(reason); err != nil {
		return nil, err
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
	s.publish(ctx, iothub.Event{Kind: iothub.EventCertRevoked, ProductKey: c.ProductKey, DeviceKey: c.DeviceKey, Serial: serial, Reason: reason})
	s.log.Info("pki: certificate revoked", "serial", serial, "productKey", c.ProductKey, "deviceKey", c.DeviceKey, "reason", reason)
	return c, nil
}

// checkReason refuses anything but an RFC 5280 reason name usable to revoke.
func checkReason(reason string) error {
	if _, ok := reasonCodes[reason]; ok {
		return nil
	}
	if reason == "removeFromCRL" {
		return iothub.Errorf(iothub.EINVALID, "reason removeFromCRL is for delta CRLs and cannot be used to revoke")
	}
	return iothub.Errorf(iothub.EINVALID, "unknown revocation reason %q; use an RFC 5280 name such as keyCompromise, superseded or cessationOfOperation", reason)
}

// Certificate returns the certificate with serial.
func (s *Service) Certificate(ctx context.Context, serial string) (*iothub.Certificate, error) {
	serial, err := normalizeSerial(serial)
	if err != nil {
		return nil, err
	}
	return s.store.Certificate(ctx, serial)
}

// Certificates lists the certificates of the device with assetID.
func (s *Service) Certificates(ctx context.Context, assetID string) ([]*iothub.Certificate, error) {
	return s.store.CertificatesByAsset(ctx, assetID)
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
