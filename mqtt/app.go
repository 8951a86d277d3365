package mqtt

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/iothub/iothub"
	hubhttp "github.com/iothub/iothub/http"
	"github.com/iothub/iothub/sign"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Applications over MQTT. An application logs in with user name AppUsername
// and an API key as password (any client id). It may subscribe, wildcards
// allowed, to its org's devices' upstream topics and to their states:
//
//	/sys/{pk}/{dk}/thing/measurepoint/post   measurepoint posts
//	/sys/{pk}/{dk}/thing/event/{id}/post     event posts
//	/sys/{pk}/{dk}/thing/attribute/update    attribute updates
//	/sys/{pk}/{dk}/hub/state                 device state changes
//
// Each message is the change's JSON {productKey, deviceKey, time, …}, as
// the live stream carries it, sent once committed. It publishes nothing:
// commands go through the API. Revoking its key ends its session.

// AppUsername is the MQTT user name of an application login.
const AppUsername = "$app"

// appQueue is how many messages an application may have waiting; past it
// the application is too slow and is disconnected.
const appQueue = 10000

// appSession is what an application session has beyond a session.
type appSession struct {
	keyID string
	out   chan appMessage
	stop  chan struct{}
	once  sync.Once
}

type appMessage struct {
	topic   string
	payload []byte
}

// appRelay follows the change log while applications are connected.
type appRelay struct {
	mu     sync.Mutex
	count  int
	cancel context.CancelFunc
}

// loginApp checks an application login: the password is an unrevoked API key.
func (s *Server) loginApp(ctx context.Context, password, remote string, now time.Time) (*session, *refusal) {
	if s.cfg.Feed == nil {
		return nil, &refusal{code: codeNotAuthorized, reason: "application logins need the change log"}
	}
	k, err := s.cfg.Store.APIKeyByHash(ctx, hubhttp.HashAPIKey(password))
	switch {
	case iothub.ErrorCode(err) == iothub.ENOTFOUND:
		return nil, &refusal{code: codeBadCredentials, reason: "application: unknown or revoked API key", failed: true}
	case err != nil:
		return nil, &refusal{code: codeBusy, reason: "application: store error"}
	}
	ss := &session{orgID: k.OrgID, sysPrefix: "\x00", extPrefix: "\x00",
		app: &appSession{keyID: k.ID, out: make(chan appMessage, appQueue), stop: make(chan struct{})}}
	if k.Bootstrap {
		ss.orgID = "" // the bootstrap key acts in every org
	}
	return ss, nil
}

// startApp begins an accepted application session: its writer, and the
// relay if it is the first.
func (s *Server) startApp(ss *session) {
	s.mu.Lock()
	s.byClient[ss.cl] = ss
	s.mu.Unlock()
	s.met.connections.Inc()
	go s.writeApp(ss)
	s.relay.mu.Lock()
	defer s.relay.mu.Unlock()
	if s.relay.count++; s.relay.count == 1 {
		ctx, cancel := context.WithCancel(context.Background())
		s.relay.cancel = cancel
		go s.runRelay(ctx)
	}
}

// endApp stops an application session's writer, and the relay with the last one.
func (s *Server) endApp(ss *session) {
	ss.app.once.Do(func() { close(ss.app.stop) })
	s.relay.mu.Lock()
	defer s.relay.mu.Unlock()
	if s.relay.count--; s.relay.count == 0 {
		s.relay.cancel()
	}
}

// writeApp writes an application's queued messages to its connection.
func (s *Server) writeApp(ss *session) {
	for {
		select {
		case <-ss.app.stop:
			return
		case m := <-ss.app.out:
			if err := s.writePublish(ss.cl, m.topic, m.payload); err != nil {
				s.kick(ss, codeBusy, "app_write_failed")
				return
			}
		}
	}
}

// appAllows is the access rule of an application: no publish at all;
// subscriptions and deliveries under /sys/ of its org's products. A
// wildcard product level is allowed in a filter: each delivery is checked.
func (s *Server) appAllows(ss *session, topic string, write bool) bool {
	if write {
		return false
	}
	rest, ok := strings.CutPrefix(topic, "/sys/")
	if !ok {
		return false
	}
	pk, _, _ := strings.Cut(rest, "/")
	if pk == "+" || pk == "#" {
		return true
	}
	if ss.orgID == "" {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := s.product(ctx, pk)
	return err == nil && p.OrgID == ss.orgID
}

// changeTopic is the MQTT topic an application receives a change on.
func changeTopic(ch iothub.DataChange) string {
	base := sysPrefix(ch.ProductKey, ch.DeviceKey)
	switch ch.Kind {
	case iothub.DataMeasurepoints:
		return base + "thing/measurepoint/post"
	case iothub.DataEvents:
		var e struct{ EventID string }
		_ = json.Unmarshal(ch.Data, &e)
		return base + "thing/event/" + e.EventID + "/post"
	case iothub.DataAttributes:
		return base + "thing/attribute/update"
	}
	return base + "hub/state"
}

// runRelay hands each new change to the application sessions subscribed
// to its topic, in its org; an application whose queue is full is cut off.
func (s *Server) runRelay(ctx context.Context) {
	after, err := s.cfg.Feed.Newest(ctx)
	if err != nil {
		s.log.Error("mqtt: applications get no data: reading the change log", "error", err)
		return
	}
	_ = s.cfg.Feed.Follow(ctx, iothub.DataFilter{After: after}, func(changes []iothub.DataChange) error {
		for _, ch := range changes {
			topic := changeTopic(ch)
			for _, t := range s.topics.match(topic) {
				ss := s.lookup(t.c)
				if ss == nil || ss.app == nil || (ss.orgID != "" && ss.orgID != ch.OrgID) {
					continue
				}
				select {
				case ss.app.out <- appMessage{topic, ch.Data}:
				default:
					s.kick(ss, codeBusy, "app_too_slow")
				}
			}
		}
		return nil
	})
}

// revokeKey ends the application sessions of a revoked API key.
func (s *Server) revokeKey(keyID string) {
	var hit []*session
	s.mu.RLock()
	for _, ss := range s.byClient {
		if ss.app != nil && ss.app.keyID == keyID {
			hit = append(hit, ss)
		}
	}
	s.mu.RUnlock()
	for _, ss := range hit {
		s.kick(ss, codeNotAuthorized, "apikey_revoked")
	}
}

// connectApp decides an application's CONNECT, like connect for devices.
func (s *Server) connectApp(ctx context.Context, cl *conn, pk packets.Packet, remote string, now time.Time) error {
	ss, ref := s.loginApp(ctx, string(pk.Connect.Password), remote, now)
	if ref != nil {
		return s.refuse(cl, sign.Login{}, false, remote, now, ref)
	}
	ss.cl, ss.remote = cl, remote
	ss.touch(now)
	cl.id = "app|" + ss.app.keyID + "|" + cl.id // apps cannot take a device's session over
	cl.will = nil                               // an application publishes nothing, not even a will
	s.startApp(ss)
	s.met.logins.WithLabelValues("ok").Inc()
	s.audit(iothub.AuditEvent{Time: now, OrgID: ss.orgID, Kind: "app.login", Remote: remote, Reason: "apikey " + ss.app.keyID})
	return nil
}
