package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iothub/iothub/client"
)

// fleetConn is the outcome of connecting many devices.
type fleetConn struct {
	clients []paho.Client // nil where the login failed
	lat     latencies
	errs    atomic.Int64
	lost    atomic.Int64
	elapsed time.Duration // first dial to last CONNACK
}

// connectMany logs devs in, at rate per second when rate > 0 (open loop),
// otherwise as fast as concurrency parallel logins allow. Every client
// gets setup called before its CONNECT (to set handlers).
func (t *target) connectMany(transport string, devs []*device, rate float64, concurrency int, setup func(*paho.ClientOptions, *device)) *fleetConn {
	fc := &fleetConn{clients: make([]paho.Client, len(devs))}
	var wg sync.WaitGroup
	var firstErr sync.Once
	sem := make(chan struct{}, max(concurrency, 1))
	start := time.Now()
	var last atomic.Int64
	for i, d := range devs {
		if rate > 0 {
			if wait := time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))); wait > 0 {
				time.Sleep(wait)
			}
		} else {
			sem <- struct{}{}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if rate <= 0 {
				defer func() { <-sem }()
			}
			o, err := t.options(transport, i, d)
			if err == nil {
				o.SetConnectionLostHandler(func(paho.Client, error) { fc.lost.Add(1) })
				if setup != nil {
					setup(o, d)
				}
				var c paho.Client
				var lat time.Duration
				c, lat, err = connectWith(o)
				if err == nil {
					fc.clients[i] = c
					fc.lat.add(lat)
					last.Store(int64(time.Since(start)))
					return
				}
			}
			fc.errs.Add(1)
			firstErr.Do(func() { log.Printf("%s %s: first login error (device %s): %v", t.broker, transport, d.DK, err) })
		}()
	}
	wg.Wait()
	fc.elapsed = time.Duration(last.Load())
	return fc
}

// ok counts the connected clients.
func (fc *fleetConn) ok() int {
	n := 0
	for _, c := range fc.clients {
		if c != nil {
			n++
		}
	}
	return n
}

// close disconnects every client, 64 at a time, and waits a moment so the
// broker has finished its bookkeeping before the next scenario.
func (fc *fleetConn) close(settle time.Duration) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range fc.clients {
		if c == nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Disconnect(20)
			<-sem
		}()
	}
	wg.Wait()
	time.Sleep(settle)
}

// runConnect measures logins: rate and dial-to-CONNACK latency.
func (t *target) runConnect(r *Result, transport string, n int, rate float64, concurrency int) error {
	devs, err := t.fleet.pick(transport, n)
	if err != nil {
		return err
	}
	fc := t.connectMany(transport, devs, rate, concurrency, nil)
	defer fc.close(t.settle)
	r.Params = map[string]any{"transport": transport, "n": n, "rate": rate, "concurrency": concurrency}
	r.Errors = int(fc.errs.Load())
	if fc.elapsed > 0 {
		r.add("logins/s", float64(fc.ok())/fc.elapsed.Seconds(), "1/s", true)
	}
	r.addLatency("CONNECT→CONNACK", fc.lat.snapshot())
	return nil
}

// idleConfig is what the idle scenario does besides connecting.
type idleConfig struct {
	hold        time.Duration // how long the connections are held before reading memory
	pid         int           // broker process whose VmRSS is read
	ready       string        // when set, a file written once every device is connected
	extrapolate int           // when > 0, also state the RSS of this many connections
}

// runIdle holds n idle connections for cfg.hold (or until SIGINT or
// SIGTERM) and reports the broker's resident memory before and after.
func (t *target) runIdle(r *Result, transport string, n int, rate float64, concurrency int, cfg idleConfig) error {
	devs, err := t.fleet.pick(transport, n)
	if err != nil {
		return err
	}
	before, err := readRSS(cfg.pid)
	if err != nil {
		return err
	}
	fc := t.connectMany(transport, devs, rate, concurrency, nil)
	defer fc.close(t.settle)
	if cfg.ready != "" {
		if err := os.WriteFile(cfg.ready, []byte(strconv.Itoa(fc.ok())+"\n"), 0o644); err != nil {
			return err
		}
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	select {
	case <-time.After(cfg.hold):
	case <-stop:
	}
	signal.Stop(stop)
	after, err := readRSS(cfg.pid)
	if err != nil {
		return err
	}
	ok := fc.ok()
	r.Params = map[string]any{"transport": transport, "n": n, "hold": cfg.hold.String(), "pid": cfg.pid}
	r.Errors = int(fc.errs.Load() + fc.lost.Load())
	r.add("connected after hold", float64(ok-int(fc.lost.Load())), "conns", true)
	r.add("RSS before", float64(before)/(1<<20), "MiB", false)
	r.add("RSS with all connected", float64(after)/(1<<20), "MiB", false)
	if ok > 0 {
		perConn := float64(after-before) / float64(ok)
		r.add("RSS per connection", perConn/1024, "KiB", false)
		if cfg.extrapolate > 0 {
			projected := float64(before) + perConn*float64(cfg.extrapolate)
			r.add(fmt.Sprintf("RSS for %s connections (from slope)", countName(cfg.extrapolate)), projected/(1<<30), "GiB", false)
		}
	}
	return nil
}

// countName writes whole millions as "1M", other counts as digits.
func countName(n int) string {
	if n%1_000_000 == 0 {
		return strconv.Itoa(n/1_000_000) + "M"
	}
	return strconv.Itoa(n)
}

// benchTopic is the topic a device publishes to and subscribes to: its own.
func benchTopic(d *device) string { return d.prefix() + "bench/t" }

// runPublish: n devices each subscribe to their own topic and publish to
// it for dur, at rate messages per second in total (0: as fast as the
// broker takes them; QoS 1 keeps window messages in flight per device).
func (t *target) runPublish(r *Result, transport string, n, qos int, rate float64, dur time.Duration, size, window int) error {
	devs, err := t.fleet.pick(transport, n)
	if err != nil {
		return err
	}
	if size < 8 {
		size = 8
	}
	var received atomic.Int64
	var lastRecv atomic.Int64
	var lat latencies
	handler := func(_ paho.Client, m paho.Message) {
		p := m.Payload()
		if len(p) < 8 {
			return
		}
		now := time.Now().UnixNano()
		lat.add(time.Duration(now - int64(binary.BigEndian.Uint64(p))))
		received.Add(1)
		lastRecv.Store(now)
	}
	fc := t.connectMany(transport, devs, 0, 32, nil)
	defer fc.close(t.settle)
	r.Params = map[string]any{"transport": transport, "devices": n, "qos": qos, "rate": rate, "duration": dur.String(), "size": size, "window": window}
	if fc.ok() != n {
		r.Errors = n - fc.ok()
		return fmt.Errorf("only %d of %d devices logged in", fc.ok(), n)
	}
	for i, c := range fc.clients {
		tok := c.Subscribe(benchTopic(devs[i]), byte(qos), handler)
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			return fmt.Errorf("subscribe %s: %v", devs[i].DK, tok.Error())
		}
		if s, ok := tok.(*paho.SubscribeToken); ok && s.Result()[benchTopic(devs[i])] == 0x80 {
			return fmt.Errorf("subscribe %s: refused", devs[i].DK)
		}
	}
	var sent, acked, failed atomic.Int64
	start := time.Now()
	deadline := start.Add(dur)
	var wg sync.WaitGroup
	for i, c := range fc.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			topic := benchTopic(devs[i])
			toks := make([]paho.Token, max(window, 1))
			p := newPacer(start, deadline, n, rate)
			for k := 0; p.next(k); k++ {
				slot := k % len(toks)
				if qos > 0 && toks[slot] != nil {
					if waitToken(toks[slot]) {
						acked.Add(1)
					} else {
						failed.Add(1)
					}
				}
				p := make([]byte, size)
				binary.BigEndian.PutUint64(p, uint64(time.Now().UnixNano()))
				toks[slot] = c.Publish(topic, byte(qos), false, p)
				sent.Add(1)
			}
			if qos > 0 {
				for _, tok := range toks {
					if tok != nil {
						if waitToken(tok) {
							acked.Add(1)
						} else {
							failed.Add(1)
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	pubEnd := time.Since(start)
	// Let the deliveries in flight arrive: stop when all did or none came for 1 s.
	for prev, idle := received.Load(), 0; received.Load() < sent.Load() && idle < 10; {
		time.Sleep(100 * time.Millisecond)
		if cur := received.Load(); cur == prev {
			idle++
		} else {
			prev, idle = cur, 0
		}
	}
	recvEnd := time.Duration(lastRecv.Load() - start.UnixNano())
	r.Errors = int(failed.Load() + fc.lost.Load())
	r.add("sent", float64(sent.Load())/pubEnd.Seconds(), "msg/s", true)
	if qos > 0 {
		r.add("PUBACKs", float64(acked.Load())/pubEnd.Seconds(), "msg/s", true)
	}
	if recvEnd > 0 {
		r.add("delivered", float64(received.Load())/recvEnd.Seconds(), "msg/s", true)
	}
	if s := sent.Load(); s > 0 {
		r.add("lost", 100*float64(s-received.Load())/float64(s), "%", false)
	}
	r.addLatency("end-to-end", lat.snapshot())
	return nil
}

func waitToken(tok paho.Token) bool {
	return tok.WaitTimeout(10*time.Second) && tok.Error() == nil
}

// serviceRequest is a downstream service call as devices receive it.
type serviceRequest struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
}

// answerCalls makes a device answer every service call it receives on
// {prefix}thing/service/{id} with code 200 and the params echoed back.
func answerCalls(o *paho.ClientOptions, d *device) {
	prefix := d.prefix() + "thing/service/"
	o.SetDefaultPublishHandler(func(c paho.Client, m paho.Message) {
		if !strings.HasPrefix(m.Topic(), prefix) || strings.HasSuffix(m.Topic(), "_reply") {
			return
		}
		var req serviceRequest
		if json.Unmarshal(m.Payload(), &req) != nil || len(req.ID) == 0 {
			return
		}
		reply := fmt.Sprintf(`{"id":%s,"code":200,"data":{},"message":""}`, req.ID)
		c.Publish(m.Topic()+"_reply", 0, false, reply)
	})
}

// caller sends one service call to a device and waits for its answer.
type caller interface {
	call(ctx context.Context, d *device, seq int) error
}

// apiCaller calls devices through the hub's REST API.
type apiCaller struct{ c *client.Client }

func (a apiCaller) call(ctx context.Context, d *device, seq int) error {
	var out struct {
		Code int `json:"code"`
	}
	body := map[string]any{"params": map[string]any{"seq": seq}, "timeoutMs": 5000}
	if err := a.c.Do(ctx, "POST", "/api/v1/products/"+d.PK+"/devices/"+d.DK+"/services/echo", body, &out); err != nil {
		return err
	}
	if out.Code != 200 {
		return fmt.Errorf("device answered %d", out.Code)
	}
	return nil
}

// mqttCaller calls devices as an MQTT application client (the "app" user):
// it publishes the request to the device's service topic and waits for
// the reply on the _reply topic. This is how one calls a device through a
// plain broker, which has no API.
type mqttCaller struct {
	c       paho.Client
	mu      sync.Mutex
	waiting map[string]chan struct{}
}

func newMQTTCaller(t *target) (*mqttCaller, error) {
	m := &mqttCaller{waiting: map[string]chan struct{}{}}
	o, err := t.options("tcp", 0, &device{DK: "app", Secret: t.fleet.App})
	if err != nil {
		return nil, err
	}
	o.SetOrderMatters(false)
	c, _, err := connectWith(o)
	if err != nil {
		return nil, err
	}
	tok := c.Subscribe("/sys/+/+/thing/service/echo_reply", 0, func(_ paho.Client, msg paho.Message) {
		var rep struct {
			ID   string `json:"id"`
			Code int    `json:"code"`
		}
		if json.Unmarshal(msg.Payload(), &rep) != nil {
			return
		}
		m.mu.Lock()
		ch := m.waiting[rep.ID]
		delete(m.waiting, rep.ID)
		m.mu.Unlock()
		if ch != nil {
			close(ch)
		}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		c.Disconnect(0)
		return nil, fmt.Errorf("app subscribe: %v", tok.Error())
	}
	m.c = c
	return m, nil
}

func (m *mqttCaller) call(ctx context.Context, d *device, seq int) error {
	id := strconv.Itoa(seq)
	ch := make(chan struct{})
	m.mu.Lock()
	m.waiting[id] = ch
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.waiting, id)
		m.mu.Unlock()
	}()
	req := fmt.Sprintf(`{"id":%q,"version":"1.0","method":"thing.service.echo","params":{"seq":%d}}`, id, seq)
	m.c.Publish(d.prefix()+"thing/service/echo", 1, false, req)
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// runCall: n devices online answer service calls; concurrency callers
// call them round robin for dur.
func (t *target) runCall(r *Result, n, concurrency int, dur time.Duration, cl caller) error {
	devs, err := t.fleet.pick("tcp", n)
	if err != nil {
		return err
	}
	fc := t.connectMany("tcp", devs, 0, 32, answerCalls)
	defer fc.close(t.settle)
	if fc.ok() != n {
		r.Errors = n - fc.ok()
		return fmt.Errorf("only %d of %d devices logged in", fc.ok(), n)
	}
	if t.login == "userpass" { // a plain broker delivers only to subscribers
		for i, c := range fc.clients {
			tok := c.Subscribe(devs[i].prefix()+"thing/service/+", 1, nil)
			if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				return fmt.Errorf("subscribe %s: %v", devs[i].DK, tok.Error())
			}
		}
	}
	r.Params = map[string]any{"devices": n, "concurrency": concurrency, "duration": dur.String()}
	var lat latencies
	var seq, failed atomic.Int64
	start := time.Now()
	deadline := start.Add(dur)
	var wg sync.WaitGroup
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				k := int(seq.Add(1))
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				t0 := time.Now()
				err := cl.call(ctx, devs[k%n], k)
				cancel()
				if err != nil {
					if failed.Add(1) == 1 {
						log.Printf("%s call: first error: %v", t.broker, err)
					}
					continue
				}
				lat.add(time.Since(t0))
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	s := lat.snapshot()
	r.Errors = int(failed.Load())
	r.add("calls/s", float64(len(s))/el.Seconds(), "1/s", true)
	r.addLatency("round trip", s)
	return nil
}
