package mqtt

import (
	"crypto/x509"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iothub/iothub"
)

// session is what the hub remembers about one logged-in connection. The
// fields are fixed at login except the atomics, so the hot paths (ACL,
// request routing) read them without locks.
type session struct {
	cl         *conn
	dev        iothub.DeviceID
	orgID      string
	remote     string      // source IP
	activation bool        // securemode 3: may only use the activation topics
	tls        bool        // connected over TLS: secrets may be sent on it
	app        *appSession // an application (AppUsername), not a device

	sysPrefix string // "/sys/{pk}/{dk}/"
	extPrefix string // "/ext/session/{pk}/{dk}/"
	actReply  string // activation: the one topic it may publish to

	loginAt        time.Time
	secretVersion  int
	serial         string // client certificate serial, "" when none
	product        *iothub.Product
	peer           []*x509.Certificate // client certificate chain, kept to re-check it when the hub's CAs change
	certNotAfter   time.Time
	offlineTimeout time.Duration // 0: the keepalive deadline only
	actInfo        []byte        // activation: the thing.activate.info push

	lastSeen    atomic.Int64 // unix nanoseconds of the last inbound packet
	flushed     atomic.Int64 // lastSeen value last written by TouchDevices
	quiet       atomic.Bool  // closed by the hub after a state change: leave the stored state alone
	revoked     atomic.Int64 // unix nanoseconds when its certificate's revocation was heard
	established atomic.Bool  // its CONNACK is written (its inflight set is final)
	refusals    atomic.Int32 // posts refused in a row for want of storage
	// closeAfterReply ends the session once the current request is answered.
	closeAfterReply atomic.Bool
	answersOnce     sync.Once
	answerQ         *answerQueue // see answers()
	timer           *time.Timer  // certificate expiry or activation deadline

	// gateway is set on a sub-device's session: the gateway session whose
	// connection (cl) it uses.
	gateway *session
	// subs are a gateway's logged-in sub-devices by /sys/ prefix.
	subMu sync.RWMutex
	subs  map[string]*session
}

// Topic prefixes of a device.
func sysPrefix(pk, dk string) string { return "/sys/" + pk + "/" + dk + "/" }
func extPrefix(pk, dk string) string { return "/ext/session/" + pk + "/" + dk + "/" }

// Topics of the activation push.
const (
	activateTopic = "thing/activate/info"
	replySuffix   = "_reply"
)

// allow is the access rule, the only one: a device publishes and
// subscribes only under its own /sys/{pk}/{dk}/ and /ext/session/{pk}/{dk}/.
// Keys cannot hold '+', '#' or '/', so a filter that starts with one of the
// prefixes cannot match another device's topic, and a wildcard before the
// prefix's end fails the compare. An activation session may subscribe
// under its /ext/session/ prefix and publish only the activation reply.
// It reads memory only and allocates nothing.
func (s *session) allow(topic string, write bool) bool {
	if s.activation {
		if write {
			return topic == s.actReply
		}
		return strings.HasPrefix(topic, s.extPrefix)
	}
	return strings.HasPrefix(topic, s.sysPrefix) || strings.HasPrefix(topic, s.extPrefix) || s.subFor(topic) != nil
}

// touch records inbound activity.
func (s *session) touch(now time.Time) { s.lastSeen.Store(now.UnixNano()) }

// lookup returns the session of a connection.
func (s *Server) lookup(cl *conn) *session {
	s.mu.RLock()
	ss := s.byClient[cl]
	s.mu.RUnlock()
	return ss
}

// deviceSession returns the live static-login session of a device.
func (s *Server) deviceSession(dev iothub.DeviceID) *session {
	s.mu.RLock()
	ss := s.byDevice[dev]
	s.mu.RUnlock()
	return ss
}

// register indexes a new session. It refuses (false) a session whose
// certificate is revoked by now: the check runs under the index lock, and
// the certificate service marks a revocation before it publishes the
// event, so a revocation racing with a login either is seen here or finds
// the session in the index.
func (s *Server) register(ss *session) bool {
	s.mu.Lock()
	if ss.serial != "" && s.cfg.Certs.IsRevoked(ss.serial) {
		s.mu.Unlock()
		return false
	}
	s.byClient[ss.cl] = ss
	if ss.activation {
		s.byAct[ss.dev] = ss
	} else {
		s.byDevice[ss.dev] = ss
	}
	if ss.serial != "" {
		set := s.bySerial[ss.serial]
		if set == nil {
			set = map[*session]struct{}{}
			s.bySerial[ss.serial] = set
		}
		set[ss] = struct{}{}
	}
	s.mu.Unlock()
	s.met.connections.Inc()
	return true
}

// unregister removes ss from the indexes. It reports whether ss was still
// the device's current session (false after a takeover) and whether it
// was registered at all.
func (s *Server) unregister(ss *session) (current, found bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byClient[ss.cl] != ss {
		return false, false
	}
	delete(s.byClient, ss.cl)
	if s.byDevice[ss.dev] == ss {
		delete(s.byDevice, ss.dev)
		current = true
	}
	if s.byAct[ss.dev] == ss {
		delete(s.byAct, ss.dev)
	}
	if ss.serial != "" {
		if set := s.bySerial[ss.serial]; set != nil {
			delete(set, ss)
			if len(set) == 0 {
				delete(s.bySerial, ss.serial)
			}
		}
	}
	s.met.connections.Dec()
	return current, true
}

// Online reports whether the device has a live session on this node.
func (s *Server) Online(productKey, deviceKey string) bool {
	ss := s.deviceSession(iothub.DeviceID{ProductKey: productKey, DeviceKey: deviceKey})
	return ss != nil && !ss.cl.isClosed()
}
