package mqtt

import (
	"context"
	"time"

	"github.com/iothub/iothub"
)

// errShuttingDown answers the calls a stopping hub cannot complete.
var errShuttingDown = iothub.Errorf(iothub.EUNAVAILABLE, "the hub is shutting down; call again in a moment")

// Drain begins a graceful stop: new logins are refused (server
// unavailable) and new service calls fail with EUNAVAILABLE, while the
// calls under way get until ctx ends to be answered by their devices;
// those still waiting then fail with EUNAVAILABLE. Close follows, which
// ends the sessions (MQTT 5: DISCONNECT 0x8B, server shutting down).
func (s *Server) Drain(ctx context.Context) {
	s.draining.Store(true)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for s.pendingCalls() > 0 {
		select {
		case <-ctx.Done():
			s.log.Warn("mqtt: stopping with service calls unanswered; they fail as unavailable", "calls", s.pendingCalls())
			s.drainOnce.Do(func() { close(s.abandon) })
			return
		case <-tick.C:
		}
	}
	s.drainOnce.Do(func() { close(s.abandon) })
}

func (s *Server) pendingCalls() int {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	return len(s.pending)
}
