package mqtt

import (
	"context"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iothub/iothub"
)

// onEvent makes live sessions feel changes made elsewhere and drops what
// the login cache held about the changed device or product. It returns at
// once (bus subscribers must not block); the checks run in a goroutine and
// read the store, not the cache.
func (s *Server) onEvent(e iothub.Event) {
	switch e.Kind {
	case iothub.EventDeviceChanged:
		if s.reg != nil {
			s.reg.dropDevice(iothub.DeviceID{ProductKey: e.ProductKey, DeviceKey: e.DeviceKey})
		}
		go s.recheckDevice(iothub.DeviceID{ProductKey: e.ProductKey, DeviceKey: e.DeviceKey})
	case iothub.EventCertRevoked:
		s.mu.RLock()
		var hit []*session
		for ss := range s.bySerial[e.Serial] {
			hit = append(hit, ss)
		}
		s.mu.RUnlock()
		now := time.Now().UnixNano()
		for _, ss := range hit {
			ss.revoked.Store(now)
			s.kick(ss, codeNotAuthorized, "cert_revoked")
		}
	case iothub.EventSessionOpened:
		s.takenOver(e)
	case iothub.EventAPIKeyRevoked:
		s.revokeKey(e.KeyID)
	case iothub.EventProductChanged:
		if s.reg != nil {
			s.reg.dropProduct(e.ProductKey)
		}
		s.models.drop(e.ProductKey)
		go s.recheckProduct(e.ProductKey)
	}
}

// trustUpdateTopic is the notice, under a device's /sys/ prefix, that the
// hub's CAs changed: the device refreshes its trust bundle and CRLs.
const trustUpdateTopic = "thing/trust/update"

// trustUpdateNotice is its payload (no reply is expected).
var trustUpdateNotice = []byte(`{"id":"0","version":"1.0","method":"thing.trust.update","params":{}}`)

// AuthorityChanged is called once the hub's CAs changed and were
// reloaded: it closes the certificate sessions whose chain the certificate
// service no longer admits (issued by a retired CA) and tells the others
// to refresh their trust.
func (s *Server) AuthorityChanged() {
	var hit, rest []*session
	now := time.Now()
	s.mu.RLock()
	for _, ss := range s.byDevice {
		if ss.gateway != nil || !ss.established.Load() {
			continue // a sub-device rides on its gateway's connection; a login not yet answered is checked against the new CAs already
		}
		if ss.peer != nil && s.cfg.Certs != nil {
			if _, err := s.cfg.Certs.AuthorizeClient(ss.product, ss.dev.DeviceKey, ss.peer, now); err != nil {
				hit = append(hit, ss)
				continue
			}
		}
		rest = append(rest, ss)
	}
	s.mu.RUnlock()
	for _, ss := range hit {
		s.kick(ss, codeNotAuthorized, "ca_retired")
	}
	for _, ss := range rest {
		if err := s.writePublish(ss.cl, ss.sysPrefix+trustUpdateTopic, trustUpdateNotice); err != nil {
			s.log.Debug("mqtt: trust update notice not written", "productKey", ss.dev.ProductKey, "deviceKey", ss.dev.DeviceKey, "error", err)
		}
	}
}

// recheckDevice closes the device's sessions if it was disabled, deleted
// or had its secret reset since they logged in.
func (s *Server) recheckDevice(dev iothub.DeviceID) {
	var list []*session
	s.mu.RLock()
	for _, ss := range []*session{s.byDevice[dev], s.byAct[dev]} {
		if ss != nil {
			list = append(list, ss)
		}
	}
	s.mu.RUnlock()
	if len(list) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := s.cfg.Store.Device(ctx, dev.ProductKey, dev.DeviceKey)
	if err != nil && iothub.ErrorCode(err) != iothub.ENOTFOUND {
		s.log.Error("mqtt: re-reading device", "productKey", dev.ProductKey, "deviceKey", dev.DeviceKey, "error", err)
		return
	}
	for _, ss := range list {
		switch {
		case err != nil:
			ss.quiet.Store(true)
			s.kick(ss, codeNotAuthorized, "device_deleted")
		case ss.gateway != nil && !s.inTopology(ctx, ss):
			s.kick(ss, codeNotAuthorized, "topology_removed")
		case d.State == iothub.StateDisabled:
			ss.quiet.Store(true)
			s.kick(ss, codeBanned, "device_disabled")
		case d.SecretVersion != ss.secretVersion || (!ss.activation && d.State == iothub.StateInactive):
			ss.quiet.Store(true)
			s.kick(ss, codeNotAuthorized, "secret_reset")
		}
	}
}

// inTopology reports whether a sub-device is still in its gateway's
// topology (true when the store cannot tell: the session is left alone).
func (s *Server) inTopology(ctx context.Context, sub *session) bool {
	gw, err := s.cfg.Store.GatewayOf(ctx, sub.dev)
	if err != nil {
		return iothub.ErrorCode(err) != iothub.ENOTFOUND
	}
	return gw == sub.gateway.dev
}

// recheckProduct closes the sessions a product change invalidates: the
// product is gone, it now requires certificates, or (for activation
// sessions) activation was switched off or the ProductSecret rotated.
func (s *Server) recheckProduct(pk string) {
	var list []*session
	s.mu.RLock()
	for _, index := range []map[iothub.DeviceID]*session{s.byDevice, s.byAct} {
		for dev, ss := range index {
			if dev.ProductKey == pk {
				list = append(list, ss)
			}
		}
	}
	s.mu.RUnlock()
	if len(list) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := s.cfg.Store.Product(ctx, pk)
	if err != nil && iothub.ErrorCode(err) != iothub.ENOTFOUND {
		return
	}
	for _, ss := range list {
		switch {
		case err != nil:
			s.kick(ss, codeNotAuthorized, "product_deleted")
		case ss.activation:
			s.kick(ss, codeNotAuthorized, "product_changed")
		case p.AuthMode == iothub.AuthCertificate && ss.serial == "":
			s.kick(ss, codeNotAuthorized, "certificate_required")
		}
	}
}

// sweep runs the periodic work: closing silent sessions and those that
// leave too much unacknowledged, flushing last-seen times, pruning
// rate-limit buckets and expired persistent sessions.
func (s *Server) sweep() {
	defer s.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastTouch := time.Now()
	for {
		select {
		case <-s.stop:
			return
		case now := <-tick.C:
			for _, k := range s.dueKicks(now) {
				s.kick(k.ss, k.code, k.reason)
			}
			s.expireOverdue(now)
			s.trimAfterBurst(now)
			if now.Sub(lastTouch) >= s.touchEvery {
				lastTouch = now
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				s.flushTouches(ctx)
				cancel()
				s.pruneSaved(now)
				s.limits.prune(now)
			}
		}
	}
}

// dueKick is a session the sweep closes, and why.
type dueKick struct {
	ss     *session
	code   packets.Code
	reason string
}

// dueKicks finds the sessions silent past their product's offline
// timeout and those holding more than maxUnacked deliveries. It walks the
// index in place: an idle hub allocates nothing here however many
// sessions it holds.
func (s *Server) dueKicks(now time.Time) []dueKick {
	var due []dueKick
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, ss := range s.byClient {
		switch {
		case ss.offlineTimeout > 0 && now.Sub(time.Unix(0, ss.lastSeen.Load())) > ss.offlineTimeout:
			due = append(due, dueKick{ss, codeNotAuthorized, "offline_timeout"})
		case ss.established.Load() && ss.cl.unacked() > maxUnacked:
			due = append(due, dueKick{ss, packets.ErrQuotaExceeded, "slow_consumer"}) // reads but does not acknowledge
		}
	}
	return due
}

// queueTouch keeps the last-seen time of an ended session for the next flush.
func (s *Server) queueTouch(ss *session) {
	if ss.lastSeen.Load() == ss.flushed.Load() {
		return
	}
	s.pmu.Lock()
	if s.ended == nil {
		s.ended = map[iothub.DeviceID]time.Time{}
	}
	s.ended[ss.dev] = time.Unix(0, ss.lastSeen.Load()).UTC()
	s.pmu.Unlock()
}

// flushTouches writes the last-seen times that changed since the last
// flush, for every device, in one store call.
func (s *Server) flushTouches(ctx context.Context) {
	seen := map[iothub.DeviceID]time.Time{}
	s.mu.RLock()
	for dev, ss := range s.byDevice {
		if v := ss.lastSeen.Load(); v != ss.flushed.Load() {
			seen[dev] = time.Unix(0, v).UTC()
			ss.flushed.Store(v)
		}
	}
	s.mu.RUnlock()
	s.pmu.Lock()
	for dev, t := range s.ended {
		if _, ok := seen[dev]; !ok {
			seen[dev] = t
		}
	}
	s.ended = nil
	s.pmu.Unlock()
	if len(seen) == 0 {
		return
	}
	if err := s.cfg.Store.TouchDevices(ctx, seen); err != nil {
		s.log.Error("mqtt: writing last-seen times", "devices", len(seen), "error", err)
	}
}
