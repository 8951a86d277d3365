package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	nats "github.com/nats-io/nats.go"

	"github.com/iothub/iothub"
)

// CallSubject carries downstream calls between nodes.
const CallSubject = "iothub.calls"

// AckWait is how long a node waits for another node to claim a call for a
// device the registry says is online, before answering EOFFLINE.
const AckWait = 500 * time.Millisecond

// maxCallTimeout caps how long a node works on a call forwarded to it.
const maxCallTimeout = 60 * time.Second

// DeviceReader is the registry lookup a Gateway needs.
type DeviceReader interface {
	Device(ctx context.Context, productKey, deviceKey string) (*iothub.Device, error)
}

// Gateway is an iothub.DeviceGateway for a cluster: a call for a device
// connected to this node goes to the local gateway; any other call for a
// device the registry says is online is forwarded over NATS to the node
// that holds its session, which answers with the device's reply.
//
// The forwarded call is a request on CallSubject with a reply inbox. Every
// node hears it; only a node with a live session for the device answers,
// first with an acknowledgement, then with the result. No acknowledgement
// within AckWait means no node holds the device (one that crashed leaves
// its devices "online" in the registry): EOFFLINE. Nodes trust what comes
// over NATS, which is inside the cluster's trust boundary, like the database.
type Gateway struct {
	b     *Bus
	local iothub.DeviceGateway
	store DeviceReader
	sub   *nats.Subscription

	forwarded atomic.Int64 // calls waiting on other nodes
	draining  atomic.Bool
	abandon   chan struct{} // closed when Drain gives up on the calls under way
	drainOnce sync.Once
}

var _ iothub.DeviceGateway = (*Gateway)(nil)

// callRequest is a forwarded call.
type callRequest struct {
	ProductKey string          `json:"productKey"`
	DeviceKey  string          `json:"deviceKey"`
	Topic      string          `json:"topic"`
	Method     string          `json:"method"`
	Params     json.RawMessage `json:"params,omitempty"`
	TimeoutMs  int64           `json:"timeoutMs"`
}

// callResponse is an acknowledgement (Ack), or a result: Reply, or an
// error Code and Message.
type callResponse struct {
	Ack     bool          `json:"ack,omitempty"`
	Reply   *iothub.Reply `json:"reply,omitempty"`
	Code    string        `json:"code,omitempty"`
	Message string        `json:"message,omitempty"`
}

// ServeCalls answers the calls other nodes forward for devices connected
// to local, and returns the Gateway this node's API calls through. It
// stops with the Bus.
func (b *Bus) ServeCalls(local iothub.DeviceGateway, store DeviceReader) (*Gateway, error) {
	g := &Gateway{b: b, local: local, store: store, abandon: make(chan struct{})}
	var err error
	if g.sub, err = b.nc.Subscribe(CallSubject, g.serve); err != nil {
		return nil, fmt.Errorf("nats: subscribe %s: %w", CallSubject, err)
	}
	if err := b.nc.FlushTimeout(5 * time.Second); err != nil {
		g.sub.Unsubscribe()
		return nil, fmt.Errorf("nats: subscribe %s: %w", CallSubject, err)
	}
	return g, nil
}

// Online reports whether the device has a live session on this node.
func (g *Gateway) Online(productKey, deviceKey string) bool {
	return g.local.Online(productKey, deviceKey)
}

// Call sends a downstream request to the device wherever in the cluster it
// is connected and waits for its reply until ctx ends (ETIMEOUT).
func (g *Gateway) Call(ctx context.Context, productKey, deviceKey, topic, method string, params json.RawMessage) (*iothub.Reply, error) {
	if g.local.Online(productKey, deviceKey) {
		return g.local.Call(ctx, productKey, deviceKey, topic, method, params)
	}
	if g.draining.Load() {
		return nil, errShuttingDown
	}
	d, err := g.store.Device(ctx, productKey, deviceKey)
	if err != nil {
		return nil, err
	}
	if d.State != iothub.StateOnline {
		return nil, iothub.Errorf(iothub.EOFFLINE, "device is not online")
	}
	g.forwarded.Add(1)
	defer g.forwarded.Add(-1)
	// A stopping node answers its callers instead of cutting them off.
	ctx, abandonCall := context.WithCancel(ctx)
	defer abandonCall()
	go func() {
		select {
		case <-g.abandon:
			abandonCall()
		case <-ctx.Done():
		}
	}()
	timeout := maxCallTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(time.Until(dl), maxCallTimeout)
	}
	data, err := json.Marshal(callRequest{productKey, deviceKey, topic, method, params, timeout.Milliseconds()})
	if err != nil {
		return nil, iothub.Errorf(iothub.EINVALID, "params are not valid JSON")
	}
	if int64(len(data)) > g.b.nc.MaxPayload() {
		return nil, iothub.Errorf(iothub.ETOOLARGE, "request is larger than %d bytes", g.b.nc.MaxPayload())
	}
	inbox := g.b.nc.NewRespInbox()
	sub, err := g.b.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("nats: call: %w", err)
	}
	defer sub.Unsubscribe()
	if err := g.b.nc.PublishRequest(CallSubject, inbox, data); err != nil {
		return nil, fmt.Errorf("nats: call: %w", err)
	}
	ackCtx, cancel := context.WithTimeout(ctx, AckWait)
	defer cancel()
	for waitAck := true; ; {
		wait := ctx
		if waitAck {
			wait = ackCtx
		}
		m, err := sub.NextMsgWithContext(wait)
		switch {
		case err != nil && isClosed(g.abandon):
			return nil, errShuttingDown
		case err != nil && ctx.Err() != nil:
			return nil, iothub.Errorf(iothub.ETIMEOUT, "device did not answer in time")
		case err != nil && waitAck && (errors.Is(ackCtx.Err(), context.DeadlineExceeded) || errors.Is(err, nats.ErrNoResponders)):
			// No node acknowledged, or none listens for calls at all.
			return nil, iothub.Errorf(iothub.EOFFLINE, "device is not online on any node")
		case err != nil:
			return nil, fmt.Errorf("nats: call: %w", err)
		}
		var r callResponse
		if err := json.Unmarshal(m.Data, &r); err != nil {
			return nil, fmt.Errorf("nats: call: bad response: %w", err)
		}
		switch {
		case r.Ack:
			waitAck = false
		case r.Reply != nil:
			return r.Reply, nil
		case r.Code != "":
			return nil, iothub.Errorf(r.Code, "%s", r.Message)
		default:
			return nil, errors.New("nats: call: empty response")
		}
	}
}

// errShuttingDown answers the calls a stopping node cannot complete.
var errShuttingDown = iothub.Errorf(iothub.EUNAVAILABLE, "the hub node is shutting down; call again in a moment")

// Drain begins a graceful stop of the calls this node forwards: new ones
// fail with EUNAVAILABLE, and those under way get until ctx ends to be
// answered by the other node; those still waiting then fail with
// EUNAVAILABLE.
func (g *Gateway) Drain(ctx context.Context) {
	g.draining.Store(true)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for g.forwarded.Load() > 0 && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
	g.drainOnce.Do(func() { close(g.abandon) })
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// serve answers a call forwarded by another node if the device is
// connected here; otherwise it stays silent.
func (g *Gateway) serve(m *nats.Msg) {
	var req callRequest
	if m.Reply == "" || json.Unmarshal(m.Data, &req) != nil || !g.local.Online(req.ProductKey, req.DeviceKey) {
		return
	}
	g.respond(m.Reply, callResponse{Ack: true})
	timeout := min(time.Duration(req.TimeoutMs)*time.Millisecond, maxCallTimeout)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		reply, err := g.local.Call(ctx, req.ProductKey, req.DeviceKey, req.Topic, req.Method, req.Params)
		if err != nil {
			g.respond(m.Reply, callResponse{Code: iothub.ErrorCode(err), Message: iothub.ErrorMessage(err)})
			return
		}
		g.respond(m.Reply, callResponse{Reply: reply})
	}()
}

func (g *Gateway) respond(inbox string, r callResponse) {
	data, _ := json.Marshal(r) // plain data: cannot fail
	if err := g.b.nc.Publish(inbox, data); err != nil {
		g.b.log.Warn("nats: answering a forwarded call", "error", err)
	}
}
