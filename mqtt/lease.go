package mqtt

import (
	"context"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iothub/iothub"
)

// Lease timing: a node renews its lease every leaseRenew; a lease not
// renewed for leaseExpiry is reaped by the next node to look, which marks
// the dead node's devices offline. A node killed is seen dead within
// leaseExpiry+leaseRenew.
const (
	leaseRenew  = 3 * time.Second
	leaseExpiry = 15 * time.Second
)

// startLease takes the node's lease and ends the sessions an earlier run
// of the node left online (a crash writes no logout).
func (s *Server) startLease() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ended, err := s.cfg.Store.StartNode(ctx, s.cfg.Node, s.instance, time.Now())
	if err != nil {
		return err
	}
	if ended > 0 {
		s.log.Info("mqtt: marked offline the devices this node held before it stopped", "node", s.cfg.Node, "devices", ended)
	}
	return nil
}

// lease renews the node's lease and reaps the expired leases of others
// until the server stops.
func (s *Server) lease() {
	defer s.wg.Done()
	tick := time.NewTicker(leaseRenew)
	defer tick.Stop()
	var failing bool
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		err := s.renewLease()
		switch {
		case err != nil && !failing:
			s.log.Error("mqtt: cannot renew the node's lease", "node", s.cfg.Node, "error", err)
		case err == nil && failing:
			s.log.Info("mqtt: node lease renewed again", "node", s.cfg.Node)
		}
		failing = err != nil
	}
}

func (s *Server) renewLease() error {
	ctx, cancel := context.WithTimeout(context.Background(), leaseRenew)
	defer cancel()
	now := time.Now() // leases compare wall clocks across nodes, never Config.Now
	lost, err := s.cfg.Store.RenewNode(ctx, s.cfg.Node, s.instance, now)
	if err != nil {
		return err
	}
	if lost {
		s.log.Warn("mqtt: the node's lease had expired and its devices were marked offline; marking its live sessions online again", "node", s.cfg.Node)
		s.reassertSessions()
	}
	ended, err := s.cfg.Store.ExpireNodes(ctx, now.Add(-leaseExpiry))
	if err != nil {
		return err
	}
	if ended > 0 {
		s.log.Info("mqtt: marked offline the devices of nodes whose lease expired", "devices", ended)
	}
	return nil
}

// reassertSessions queues an online write for every live session, at its
// login time: a newer login elsewhere keeps the device.
func (s *Server) reassertSessions() {
	s.mu.RLock()
	list := make([]*session, 0, len(s.byDevice))
	for _, ss := range s.byDevice {
		list = append(list, ss)
	}
	s.mu.RUnlock()
	for _, ss := range list {
		s.side.Add(sideItem{change: iothub.StateChange{Device: ss.dev, State: iothub.StateOnline, At: ss.loginAt, Node: s.cfg.Node}, ss: ss})
	}
}

// announceLogin tells the other nodes that the device now has its session
// here, so they close theirs.
func (s *Server) announceLogin(ss *session) {
	if s.cfg.Bus == nil {
		return
	}
	e := iothub.Event{Kind: iothub.EventSessionOpened, ProductKey: ss.dev.ProductKey, DeviceKey: ss.dev.DeviceKey, Node: s.cfg.Node, At: ss.loginAt}
	if err := s.cfg.Bus.Publish(context.Background(), e); err != nil {
		s.log.Warn("mqtt: announcing a login to the other nodes", "error", err)
	}
}

// takenOver closes this node's session of a device that logged in on
// another node since. The session leaves the stored state alone: the
// device is online, elsewhere.
func (s *Server) takenOver(e iothub.Event) {
	if e.Node == s.cfg.Node {
		return
	}
	ss := s.deviceSession(iothub.DeviceID{ProductKey: e.ProductKey, DeviceKey: e.DeviceKey})
	if ss == nil || ss.loginAt.After(e.At) {
		return
	}
	ss.quiet.Store(true)
	s.kick(ss, packets.ErrSessionTakenOver, "session_taken_over")
}
