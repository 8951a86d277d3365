package mqtt

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iothub/iothub"
)

func TestAccessRule(t *testing.T) {
	ss := &session{sysPrefix: sysPrefix("pk", "dk"), extPrefix: extPrefix("pk", "dk")}
	allowed := []string{"/sys/pk/dk/thing/measurepoint/post", "/sys/pk/dk/#", "/sys/pk/dk/+/x", "/ext/session/pk/dk/combine/login"}
	denied := []string{"#", "+", "/sys/pk/+/#", "/sys/pk/#", "/sys/pk/dk", "/sys/pk/dkx/a", "/sys/pk/other/a", "/sys/pkx/dk/a",
		"$share/g//sys/pk/dk/a", "/ext/session/pk/+/a", "sys/pk/dk/a", "/SYS/pk/dk/a", ""}
	for _, topic := range allowed {
		if !ss.allow(topic, true) || !ss.allow(topic, false) {
			t.Errorf("denied %q", topic)
		}
	}
	for _, topic := range denied {
		if ss.allow(topic, true) || ss.allow(topic, false) {
			t.Errorf("allowed %q", topic)
		}
	}
	act := &session{activation: true, sysPrefix: sysPrefix("pk", "dk"), extPrefix: extPrefix("pk", "dk"),
		actReply: extPrefix("pk", "dk") + "thing/activate/info_reply"}
	if !act.allow("/ext/session/pk/dk/#", false) || !act.allow("/ext/session/pk/dk/thing/activate/info_reply", true) {
		t.Error("activation session denied its own topics")
	}
	if act.allow("/sys/pk/dk/thing/measurepoint/post", true) || act.allow("/sys/pk/dk/#", false) || act.allow("/ext/session/pk/dk/combine/login", true) {
		t.Error("activation session allowed more than activation")
	}
}

func TestDeviceConfinedToItsTopics(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pka", nil)
	a := h.device(p, "a")
	b := h.device(p, "b")

	got := make(chan paho.Message, 8)
	cb := h.connect(t, "pka", "b", b.DeviceSecret)
	tok := cb.Subscribe("/sys/pka/b/#", 1, func(_ paho.Client, m paho.Message) { got <- m })
	tok.Wait()
	if r := tok.(*paho.SubscribeToken).Result()["/sys/pka/b/#"]; r != 1 {
		t.Fatalf("own subscription: SUBACK %#x", r)
	}

	ca := h.connect(t, "pka", "a", a.DeviceSecret)
	for _, f := range []string{"/sys/pka/b/#", "#", "/sys/pka/+/thing/service/x", "/ext/session/pka/b/#", "/sys/+/a/#"} {
		tok := ca.Subscribe(f, 0, nil)
		tok.Wait()
		if r := tok.(*paho.SubscribeToken).Result()[f]; r != 0x80 {
			t.Fatalf("subscription %q of another device: SUBACK %#x, want 0x80", f, r)
		}
	}
	ca.Publish("/sys/pka/b/thing/service/reboot", 0, false, `{"id":"1","method":"thing.service.reboot","params":{}}`).Wait()
	ca.Publish("/ext/session/pka/b/combine/login", 0, false, `{}`).Wait()
	// b's own publish proves its subscription works; a's must not have arrived.
	cb.Publish("/sys/pka/b/self/check", 0, false, "own").Wait()
	select {
	case m := <-got:
		if m.Topic() != "/sys/pka/b/self/check" {
			t.Fatalf("device b received %q published by device a", m.Topic())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("own message did not arrive")
	}
	select {
	case m := <-got:
		t.Fatalf("device b received %q", m.Topic())
	case <-time.After(300 * time.Millisecond):
	}
	// A QoS 1 publish outside its topics ends a 3.1.1 session.
	ca.Publish("/sys/pka/b/thing/service/reboot", 1, false, "x").WaitTimeout(2 * time.Second)
	eventually(t, "session closed after forbidden QoS 1 publish", func() bool { return !ca.IsConnectionOpen() })
}

// ask publishes a request and returns the reply on topic_reply.
func ask(t *testing.T, c paho.Client, topic, payload string) map[string]any {
	t.Helper()
	ch := make(chan []byte, 1)
	tok := c.Subscribe(topic+"_reply", 0, func(_ paho.Client, m paho.Message) { ch <- m.Payload() })
	tok.Wait()
	defer func() { c.Unsubscribe(topic + "_reply").Wait() }()
	c.Publish(topic, 1, false, payload).Wait()
	select {
	case b := <-ch:
		var r map[string]any
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("reply %q: %v", b, err)
		}
		return r
	case <-time.After(5 * time.Second):
		t.Fatalf("no reply on %s_reply", topic)
		return nil
	}
}

func TestUpstreamRequests(t *testing.T) {
	h := newTestHub(t, withMaxPayload(4096))
	p := h.product("pku", nil)
	d := h.device(p, "dev")
	h.device(p, "other")
	c := h.connect(t, "pku", "dev", d.DeviceSecret)
	post := "/sys/pku/dev/thing/measurepoint/post"

	r := ask(t, c, post, `{"id":"42","version":"1.0","method":"thing.measurepoint.post","params":{"measurepoints":{"temp":21.5,"power":{"value":1,"quality":9}},"time":1700000000000}}`)
	if r["id"] != "42" || r["code"] != 200.0 {
		t.Fatalf("post reply %v", r)
	}
	eventually(t, "stored measurepoints", func() bool {
		pts, err := h.db.LatestPoints(context.Background(), "pku", "dev")
		if err != nil {
			t.Fatal(err)
		}
		for _, pt := range pts {
			if pt.Name == "temp" && string(pt.Value) == "21.5" {
				return true
			}
		}
		return false
	})
	// A numeric id is echoed as a number.
	if r := ask(t, c, post, `{"id":7,"method":"thing.measurepoint.post","params":{"measurepoints":{"temp":1}}}`); r["id"] != 7.0 || r["code"] != 200.0 {
		t.Fatalf("numeric id reply %v", r)
	}
	for _, tc := range []struct {
		topic, payload string
		code           float64
	}{
		{post, `{"id":"1",`, 1220},
		{post, ` `, 1251},
		{post, `{"id":"1","method":"thing.event.x.post","params":{}}`, 1260},
		{post, `{"id":"1","method":"thing.measurepoint.post","params":{"measurepoints":"x"}}`, 1220},
		{post, `{"id":"1","method":"thing.measurepoint.post","params":{"measurepoints":{"a":"` + strings.Repeat("x", 5000) + `"}}}`, 1008},
		{post + "/batch", `{"id":"1","method":"thing.measurepoint.post.batch","params":[{"productKey":"pku","deviceKey":"other","measurepoints":{"temp":99}}]}`, 1009},
		{post + "/batch", `{"id":"1","method":"thing.measurepoint.post.batch","params":[{"productKey":"pku","deviceKey":"dev","measurepoints":{"batch":1}},{"measurepoints":{"batch":2},"time":1700000000001}]}`, 200},
		{"/sys/pku/dev/thing/measurepoint/resume", `{"id":"1","method":"thing.measurepoint.resume","params":{"measurepoints":{"resumed":true},"time":1600000000000}}`, 200},
		{"/sys/pku/dev/thing/event/alarm/post", `{"id":"1","method":"thing.event.alarm.post","params":{"events":{"level":3}}}`, 200},
		{"/sys/pku/dev/thing/attribute/update", `{"id":"1","method":"thing.attribute.update","params":{"attributes":{"fw":"1.2","site":"north"}}}`, 200},
		{"/sys/pku/dev/thing/attribute/delete", `{"id":"1","method":"thing.attribute.delete","params":{"attributes":["site"]}}`, 200},
		{"/sys/pku/dev/thing/tag/update", `{"id":"1","method":"thing.tag.update","params":{"tags":{"a":"b"}}}`, 200},
		{"/sys/pku/dev/thing/tag/update", `{"id":"1","method":"thing.tag.update","params":[{"tagKey":"c","tagValue":"d"}]}`, 200},
		// The Python SDK 0.1.1 sends its event method unformatted: the topic decides.
		{"/sys/pku/dev/thing/event/door/post", `{"id":"1","method":"thing.event.%s.post","params":{"events":{"open":true}}}`, 200},
		{"/sys/pku/dev/thing/event/door/post", `{"id":"1","method":"thing.attribute.update","params":{"events":{"open":true}}}`, 1260},
	} {
		r := ask(t, c, tc.topic, tc.payload)
		if r["code"] != tc.code {
			t.Fatalf("%s %.60s: reply %v, want code %v", tc.topic, tc.payload, r, tc.code)
		}
	}
	r = ask(t, c, "/sys/pku/dev/thing/attribute/query", `{"id":"q","method":"thing.attribute.query","params":{"attributes":[]}}`)
	data, _ := r["data"].(map[string]any)
	if r["code"] != 200.0 || data["fw"] != "1.2" || data["site"] != nil {
		t.Fatalf("attribute query %v", r)
	}
	r = ask(t, c, "/sys/pku/dev/thing/tag/query", `{"id":"q","method":"thing.tag.query","params":{"tags":["a","c","x"]}}`)
	if data, _ := r["data"].(map[string]any); r["code"] != 200.0 || len(data) != 2 || data["a"] != "b" || data["c"] != "d" {
		t.Fatalf("tag query %v", r)
	}
	events, err := h.db.RecentEvents(context.Background(), "pku", "dev", 0)
	if err != nil || len(events) != 2 || events[0].EventID != "door" || string(events[0].Events) != `{"open":true}` || events[1].EventID != "alarm" {
		t.Fatalf("stored events %+v (%v), want door then alarm", events, err)
	}
	// Nothing of the refused batch entry was stored for the other device.
	pts, _ := h.db.LatestPoints(context.Background(), "pku", "other")
	if len(pts) != 0 {
		t.Fatalf("other device got points %v", pts)
	}
	eventually(t, "batch stored", func() bool {
		pts, _ := h.db.LatestPoints(context.Background(), "pku", "dev")
		n := 0
		for _, pt := range pts {
			if pt.Name == "batch" || pt.Name == "resumed" {
				n++
			}
		}
		return n == 2
	})
}

// A Call reaches a device that never subscribed, and its reply comes back.
func TestCallReachesUnsubscribedDevice(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkc", nil)
	d := h.device(p, "dev")
	ctx := context.Background()
	if _, err := h.srv.Call(ctx, "pkc", "dev", "thing/service/reboot", "thing.service.reboot", nil); iothub.ErrorCode(err) != iothub.EOFFLINE {
		t.Fatalf("offline call: %v", err)
	}
	var cl paho.Client
	cl = h.connect(t, "pkc", "dev", d.DeviceSecret, func(o *pahoOptions) {
		o.SetDefaultPublishHandler(func(c paho.Client, m paho.Message) {
			var req struct {
				ID     string          `json:"id"`
				Method string          `json:"method"`
				Params json.RawMessage `json:"params"`
			}
			if json.Unmarshal(m.Payload(), &req) != nil || req.Method != "thing.service.reboot" {
				return
			}
			out, _ := json.Marshal(map[string]any{"id": req.ID, "code": 200, "data": map[string]any{"echo": req.Params}, "message": ""})
			go cl.Publish(m.Topic()+"_reply", 1, false, out)
		})
	})
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := h.srv.Call(cctx, "pkc", "dev", "thing/service/reboot", "thing.service.reboot", json.RawMessage(`{"delay":3}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.Code != 200 || string(r.Data) != `{"echo":{"delay":3}}` {
		t.Fatalf("reply %+v data=%s", r, r.Data)
	}
	// A request the device does not answer times out.
	tctx, cancel2 := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel2()
	if _, err := h.srv.Call(tctx, "pkc", "dev", "thing/service/mute", "thing.service.mute", nil); iothub.ErrorCode(err) != iothub.ETIMEOUT {
		t.Fatalf("unanswered call: %v", err)
	}
}

// Samples answered with 200 are stored even when the server closes right after.
func TestCloseFlushesAcceptedSamples(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkf", nil)
	d := h.device(p, "dev")
	c := h.connect(t, "pkf", "dev", d.DeviceSecret)
	replies := make(chan []byte, 64)
	c.Subscribe("/sys/pkf/dev/thing/measurepoint/post_reply", 0, func(_ paho.Client, m paho.Message) { replies <- m.Payload() }).Wait()
	const n = 50
	for i := range n {
		c.Publish("/sys/pkf/dev/thing/measurepoint/post", 0, false,
			fmt.Sprintf(`{"id":"%d","method":"thing.measurepoint.post","params":{"measurepoints":{"p%d":%d}}}`, i, i, i))
	}
	for range n {
		select {
		case b := <-replies:
			if !strings.Contains(string(b), `"code":200`) {
				t.Fatalf("reply %s", b)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("missing replies")
		}
	}
	if err := h.srv.Close(); err != nil {
		t.Fatal(err)
	}
	pts, err := h.db.LatestPoints(context.Background(), "pkf", "dev")
	if err != nil || len(pts) != n {
		t.Fatalf("%d of %d accepted samples stored after Close (%v)", len(pts), n, err)
	}
	if s := h.stored("pkf", "dev").State; s != iothub.StateOffline {
		t.Fatalf("state after shutdown: %s", s)
	}
}

// A product's offline timeout closes a session that sends nothing, even
// within its keepalive.
func TestOfflineTimeout(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkq", func(p *iothub.Product) { p.OfflineTimeoutSec = 1 })
	d := h.device(p, "dev")
	lost := make(chan struct{}, 1)
	h.connect(t, "pkq", "dev", d.DeviceSecret, func(o *pahoOptions) {
		o.SetKeepAlive(60 * time.Second)
		o.SetConnectionLostHandler(func(paho.Client, error) { lost <- struct{}{} })
	})
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("silent session not closed after the product's offline timeout")
	}
	eventually(t, "offline", func() bool { return h.stored("pkq", "dev").State == iothub.StateOffline })
}

// The EnOS C SDK reads a downstream request's id with atoi and writes it
// back unquoted: ids must be decimal numbers that fit an int32, and an
// unquoted numeric id in the reply must reach the call.
func TestCallIDsSurviveTheCSDK(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkcs", nil)
	d := h.device(p, "dev")
	seen := make(chan string, 10)
	var cl paho.Client
	cl = h.connect(t, "pkcs", "dev", d.DeviceSecret, func(o *pahoOptions) {
		o.SetDefaultPublishHandler(func(c paho.Client, m paho.Message) {
			var req struct{ ID string }
			if json.Unmarshal(m.Payload(), &req) != nil {
				return
			}
			seen <- req.ID
			n, err := strconv.ParseInt(req.ID, 10, 32) // what atoi keeps, and no more
			if err != nil || n <= 0 {
				return
			}
			go cl.Publish(m.Topic()+"_reply", 1, false, fmt.Sprintf(`{"id":%d,"code":200,"data":{}}`, n))
		})
	})
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := h.srv.Call(ctx, "pkcs", "dev", "thing/service/ping", "thing.service.ping", nil)
		cancel()
		id := <-seen
		if err != nil || r.Code != 200 {
			t.Fatalf("call with id %q answered the C SDK way: %v %+v", id, err, r)
		}
	}
}
