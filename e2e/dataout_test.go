package e2e

// Data out (issue 16): applications receive what devices post, once
// committed, over a live stream (SSE), forwarding rules (webhooks) and,
// org by org, nothing of another org.

import (
	"bufio"
	"context"
	"crypto/hmac"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/client"
	"github.com/iothub/iothub/feed"
	"github.com/iothub/iothub/mqtt"
	"github.com/iothub/iothub/nats/natstest"
	"github.com/iothub/iothub/postgres/pgtest"
	"github.com/iothub/iothub/sign"

	paho "github.com/eclipse/paho.mqtt.golang"
	natsgo "github.com/nats-io/nats.go"
)

// sseEvent is one server-sent event of /api/v1/stream.
type sseEvent struct {
	id   int64
	kind string
	data []byte
}

// sseStream is an open /api/v1/stream response whose events arrive on events.
type sseStream struct {
	events chan sseEvent
	cancel context.CancelFunc
	done   chan struct{}
}

// openStream opens the stream of baseURL with key and query, resuming
// after lastID when it is not empty, and fails the test unless it answers 200.
func openStream(t testing.TB, baseURL, key, query, lastID string) *sseStream {
	t.Helper()
	resp, cancel := streamRequest(t, baseURL, key, query, lastID)
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		cancel()
		t.Fatalf("stream %s: %d %s", query, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("stream content type %q", ct)
	}
	s := &sseStream{events: make(chan sseEvent, 100000), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer close(s.events)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.kind != "" {
					s.events <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				ev.id, _ = strconv.ParseInt(line[4:], 10, 64)
			case strings.HasPrefix(line, "event: "):
				ev.kind = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = []byte(line[6:])
			}
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *sseStream) close() { s.cancel(); <-s.done }

func streamRequest(t testing.TB, baseURL, key, query, lastID string) (*http.Response, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", baseURL+"/api/v1/stream?"+query, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	return resp, cancel
}

// orgKey creates an org and a key of role in it; it returns the org id,
// the key and a client with it.
func orgKey(t testing.TB, th *testHub, name string, role iothub.Role) (string, string, *client.Client) {
	t.Helper()
	var org struct{ ID string }
	do(t, th.admin, "POST", "/api/v1/orgs", map[string]any{"name": name}, &org, 201)
	var k struct{ Key string }
	do(t, th.admin, "POST", "/api/v1/orgs/"+org.ID+"/apikeys", map[string]any{"name": name, "role": role}, &k, 201)
	return org.ID, k.Key, th.as(t, k.Key)
}

// postSeen is a measurepoint post as a consumer saw it.
type postSeen struct {
	ProductKey, DeviceKey string
	Time                  time.Time
	Measurepoints         struct{ N int }
}

// seenPosts tracks, per device, the post numbers a consumer received, in
// the order received, and counts those received again.
type seenPosts struct {
	mu    sync.Mutex
	order map[string][]int
	dups  int
	bad   []string
}

func newSeenPosts() *seenPosts { return &seenPosts{order: map[string][]int{}} }

func (s *seenPosts) add(data []byte) {
	var p postSeen
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := json.Unmarshal(data, &p); err != nil || p.DeviceKey == "" || p.Time.IsZero() || p.Measurepoints.N == 0 {
		s.bad = append(s.bad, string(data))
		return
	}
	got := s.order[p.DeviceKey]
	if len(got) > 0 && p.Measurepoints.N <= got[len(got)-1] {
		s.dups++ // a redelivery (at least once); order is checked on first sight
		for _, n := range got {
			if n == p.Measurepoints.N {
				return
			}
		}
		s.bad = append(s.bad, fmt.Sprintf("%s: post %d after %d", p.DeviceKey, p.Measurepoints.N, got[len(got)-1]))
		return
	}
	s.order[p.DeviceKey] = append(got, p.Measurepoints.N)
}

// missing counts the acknowledged posts of devices not seen.
func (s *seenPosts) missing(devices []*loadDevice) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, d := range devices {
		seen := map[int]bool{}
		for _, k := range s.order[d.dk] {
			seen[k] = true
		}
		d.mu.Lock()
		for k := 1; k < d.next; k++ {
			if (d.ok[k] || d.pubacks[k]) && !seen[k] {
				n++
			}
		}
		d.mu.Unlock()
	}
	return n
}

// acked counts the acknowledged posts of devices.
func acked(devices []*loadDevice) int {
	n := 0
	for _, d := range devices {
		d.mu.Lock()
		for k := 1; k < d.next; k++ {
			if d.ok[k] || d.pubacks[k] {
				n++
			}
		}
		d.mu.Unlock()
	}
	return n
}

// waitAll waits until s has seen every acknowledged post of devices.
func (s *seenPosts) waitAll(t testing.TB, what string, devices []*loadDevice, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for s.missing(devices) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d acknowledged posts never arrived", what, s.missing(devices), acked(devices))
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.bad) > 0 {
		t.Fatalf("%s: %d bad or out-of-order deliveries, first %s", what, len(s.bad), s.bad[0])
	}
}

// drain feeds the measurepoint events of st to seen until st ends.
func drain(st *sseStream, seen *seenPosts, kind string) {
	for ev := range st.events {
		if ev.kind == kind {
			seen.add(ev.data)
		}
	}
}

// webhookReceiver is a local HTTP receiver of a rule's deliveries: it
// checks each signature and records the posts.
type webhookReceiver struct {
	secret     string
	seen       *seenPosts
	mu         sync.Mutex
	deliveries map[string]int // delivery id → times received
	badSig     int
}

func (wr *webhookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	want := feed.Sign(wr.secret, body)
	if !hmac.Equal([]byte(r.Header.Get(feed.SignatureHeader)), []byte(want)) {
		wr.mu.Lock()
		wr.badSig++
		wr.mu.Unlock()
		http.Error(w, "bad signature", 401)
		return
	}
	wr.mu.Lock()
	wr.deliveries[r.Header.Get(feed.DeliveryHeader)]++
	wr.mu.Unlock()
	wr.seen.add(body)
}

// duplicates counts deliveries received more than once.
func (wr *webhookReceiver) duplicates() int {
	wr.mu.Lock()
	defer wr.mu.Unlock()
	n := 0
	for _, c := range wr.deliveries {
		n += c - 1
	}
	return n
}

func serveReceiver(t testing.TB, ln net.Listener, wr *webhookReceiver) {
	srv := &http.Server{Handler: wr}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func newReceiver(t testing.TB, secret string) (*webhookReceiver, string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wr := &webhookReceiver{secret: secret, seen: newSeenPosts(), deliveries: map[string]int{}}
	serveReceiver(t, ln, wr)
	return wr, "http://" + ln.Addr().String() + "/hook"
}

// Every consumer gets every post of 20 devices in order per device; an
// org-B key gets nothing of org A; state changes arrive too.
func TestDataOutEveryConsumerGetsEveryPostInOrder(t *testing.T) {
	th := startHub(t, "")
	orgA, _, adminA := orgKey(t, th, "org-a", iothub.RoleAdmin)
	var viewer struct{ Key string }
	do(t, th.admin, "POST", "/api/v1/orgs/"+orgA+"/apikeys", map[string]any{"name": "viewer", "role": "viewer"}, &viewer, 201)
	viewerA := viewer.Key
	_, keyB, adminB := orgKey(t, th, "org-b", iothub.RoleAdmin)
	devices := loadDevices(t, adminA, 20)
	other := loadDevices(t, adminB, 1) // org B's own device, which org B does see

	sseA := openStream(t, th.HTTPURL(), viewerA, "kinds=measurepoints", "")
	statesA := openStream(t, th.HTTPURL(), viewerA, "kinds=states&productKey="+devices[0].pk, "")
	sseB := openStream(t, th.HTTPURL(), keyB, "", "")
	wr, url := newReceiver(t, "a-webhook-secret-of-org-a")
	var rule struct{ ID string }
	do(t, adminA, "POST", "/api/v1/rules", map[string]any{"name": "all posts", "kinds": []string{"measurepoints"},
		"webhook": map[string]any{"url": url, "secret": "a-webhook-secret-of-org-a"}}, &rule, 201)

	seenA := newSeenPosts()
	go drain(sseA, seenA, "measurepoints")
	appA := newSeenPosts()
	appClient(t, th, viewerA, map[string]func([]byte){"/sys/+/+/thing/measurepoint/post": appA.add})
	var leakedToB sync.Map
	appClient(t, th, keyB, map[string]func([]byte){"/sys/#": func(b []byte) {
		var p postSeen
		json.Unmarshal(b, &p)
		if p.ProductKey != other[0].pk {
			leakedToB.Store(p.ProductKey, true)
		}
	}})
	run := startLoad(append(devices, other...), "tcp://"+th.MQTTAddr(), 20*time.Millisecond)
	time.Sleep(1500 * time.Millisecond)
	run.end(t)
	if acked(devices) < 20*20 {
		t.Fatalf("only %d posts acknowledged: the load did not run", acked(devices))
	}
	seenA.waitAll(t, "SSE consumer", devices, 10*time.Second)
	wr.seen.waitAll(t, "webhook", devices, 20*time.Second)
	appA.waitAll(t, "MQTT application", devices, 10*time.Second)
	t.Logf("%d posts of 20 devices: SSE, webhook and MQTT application got each, in order; webhook duplicates %d", acked(devices), wr.duplicates())
	if wr.badSig != 0 {
		t.Fatalf("%d deliveries with a bad signature", wr.badSig)
	}

	// States: each device of A went online, then offline.
	states := map[string][]string{}
	deadline := time.After(10 * time.Second)
	for len(states) < 20 || !allOffline(states) {
		select {
		case ev := <-statesA.events:
			var s struct{ DeviceKey, State string }
			json.Unmarshal(ev.data, &s)
			states[s.DeviceKey] = append(states[s.DeviceKey], s.State)
		case <-deadline:
			t.Fatalf("states of %d devices seen: %v", len(states), states)
		}
	}

	// Org B saw its own device's posts and nothing of org A.
	seenB := newSeenPosts()
	sseB.close()
	for ev := range sseB.events {
		var p postSeen
		json.Unmarshal(ev.data, &p)
		if p.ProductKey != other[0].pk {
			t.Fatalf("org B's stream carried %s of product %s", ev.kind, p.ProductKey)
		}
		if ev.kind == "measurepoints" {
			seenB.add(ev.data)
		}
	}
	if seenB.missing(other) != 0 {
		t.Fatalf("org B missed %d of its own posts", seenB.missing(other))
	}
	leakedToB.Range(func(pk, _ any) bool {
		t.Fatalf("org B's MQTT application received posts of product %v", pk)
		return false
	})

	var got iothub.Rule
	do(t, adminA, "GET", "/api/v1/rules/"+rule.ID, nil, &got, 200)
	if got.Status.Delivered < int64(acked(devices)) || got.Status.Failing || got.Webhook == nil || got.Webhook.Secret != "" {
		t.Fatalf("rule as shown: %+v", got)
	}
	do(t, adminB, "GET", "/api/v1/rules/"+rule.ID, nil, nil, 404)
	do(t, adminB, "DELETE", "/api/v1/rules/"+rule.ID, nil, nil, 404)
	do(t, adminA, "DELETE", "/api/v1/rules/"+rule.ID, nil, nil, 204)
	do(t, adminA, "GET", "/api/v1/rules/"+rule.ID, nil, nil, 404)
}

func allOffline(states map[string][]string) bool {
	for _, s := range states {
		if len(s) == 0 || s[0] != "online" || s[len(s)-1] != "offline" {
			return false
		}
	}
	return true
}

// A stream consumer that disconnects for 5 s and resumes with
// Last-Event-ID misses nothing.
func TestStreamResumesAfterDisconnect(t *testing.T) {
	th := startHub(t, "")
	devices := loadDevices(t, th.admin, 5)
	first := openStream(t, th.HTTPURL(), th.AdminKey(), "kinds=measurepoints&productKey="+devices[0].pk, "")
	run := startLoad(devices, "tcp://"+th.MQTTAddr(), 20*time.Millisecond)
	seen := newSeenPosts()
	var last int64
	for n := 0; n < 50; n++ {
		select {
		case ev := <-first.events:
			seen.add(ev.data)
			last = ev.id
		case <-time.After(10 * time.Second):
			t.Fatal("no posts on the stream")
		}
	}
	first.close()
	time.Sleep(5 * time.Second) // the load goes on meanwhile
	second := openStream(t, th.HTTPURL(), th.AdminKey(), "kinds=measurepoints&productKey="+devices[0].pk, strconv.FormatInt(last, 10))
	go drain(second, seen, "measurepoints")
	time.Sleep(500 * time.Millisecond)
	run.end(t)
	seen.waitAll(t, "resumed stream", devices, 10*time.Second)
	if seen.dups != 0 {
		t.Fatalf("resuming after %d repeated %d posts", last, seen.dups)
	}
	t.Logf("%d posts, resumed after id %d, none missed", acked(devices), last)
}

// Bad input is refused with a clear error and creates nothing.
func TestDataOutRefusesBadInput(t *testing.T) {
	th := startHub(t, "")
	_, keyA, adminA := orgKey(t, th, "org-a", iothub.RoleAdmin)
	_, _, adminB := orgKey(t, th, "org-b", iothub.RoleAdmin)
	var prodB iothub.Product
	do(t, adminB, "POST", "/api/v1/products", map[string]any{"name": "b"}, &prodB, 201)
	hook := map[string]any{"url": "https://example.com/hook", "secret": "sixteen-bytes-long"}
	for _, c := range []struct {
		body   map[string]any
		status int
		want   string
	}{
		{map[string]any{"name": "x", "kinds": []string{"telemetry"}, "webhook": hook}, 400, "unknown kind"},
		{map[string]any{"name": "x", "webhook": map[string]any{"url": "ftp://example.com/", "secret": "sixteen-bytes-long"}}, 400, "http:// or https://"},
		{map[string]any{"name": "x", "webhook": map[string]any{"url": "javascript:alert(1)", "secret": "sixteen-bytes-long"}}, 400, "http:// or https://"},
		{map[string]any{"name": "x", "webhook": map[string]any{"url": "https://u:p@example.com/", "secret": "sixteen-bytes-long"}}, 400, "credentials"},
		{map[string]any{"name": "x", "webhook": map[string]any{"url": "https://example.com/", "secret": "short"}}, 400, "secret"},
		{map[string]any{"name": "x", "productKey": prodB.ProductKey, "webhook": hook}, 404, "not found"},
		{map[string]any{"name": "x"}, 400, "exactly one target"},
		{map[string]any{"name": "x", "webhook": hook, "nats": map[string]any{"subject": "a"}}, 400, "exactly one target"},
		{map[string]any{"name": "x", "nats": map[string]any{"subject": "out"}}, 400, "without NATS"},
		{map[string]any{"webhook": hook}, 400, "name is required"},
	} {
		status, err := adminA.Send(context.Background(), "POST", "/api/v1/rules", c.body, nil)
		if status != c.status || err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("rule %v: %d %v, want %d with %q", c.body, status, err, c.status, c.want)
		}
	}
	var rules struct{ Rules []iothub.Rule }
	do(t, adminA, "GET", "/api/v1/rules", nil, &rules, 200)
	if len(rules.Rules) != 0 {
		t.Fatalf("refused rules were created: %+v", rules.Rules)
	}
	for query, want := range map[string]int{
		"kinds=measurepoints,telemetry":  400,
		"productKey=" + prodB.ProductKey: 404,
		"deviceKey=x":                    400,
		"after=abc":                      400,
		"after=999999":                   400,
	} {
		resp, cancel := streamRequest(t, th.HTTPURL(), keyA, query, "")
		b, _ := io.ReadAll(resp.Body)
		cancel()
		if resp.StatusCode != want || !strings.Contains(string(b), `"error"`) {
			t.Errorf("stream %s: %d %s, want %d", query, resp.StatusCode, b, want)
		}
	}
	resp, cancel := streamRequest(t, th.HTTPURL(), "ihk_unknown", "", "")
	cancel()
	if resp.StatusCode != 401 {
		t.Errorf("stream with an unknown key: %d", resp.StatusCode)
	}
}

// Kill -9 of the hub while the webhook receiver is down: after the restart
// and the receiver's recovery every acknowledged post is delivered
// (duplicates allowed, counted), none missing.
func TestWebhookOutboxSurvivesKillDashNine(t *testing.T) {
	bin, dir := buildCLI(t), t.TempDir()
	p := startBinary(t, bin, dir)
	api := binaryHub(t, p, dir).admin
	devices := loadDevices(t, api, 10)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // the receiver is down
	secret := "kill-dash-nine-secret"
	var rule struct{ ID string }
	if _, err := api.Send(context.Background(), "POST", "/api/v1/rules", map[string]any{"name": "outbox",
		"kinds": []string{"measurepoints"}, "webhook": map[string]any{"url": "http://" + addr + "/hook", "secret": secret}}, &rule); err != nil {
		t.Fatal(err)
	}
	run := startLoad(devices, "tcp://"+p.mqttAddr, 20*time.Millisecond)
	time.Sleep(1500 * time.Millisecond)
	p.kill()
	run.end(t)
	p = startBinary(t, bin, dir)
	api = binaryHub(t, p, dir).admin
	var got iothub.Rule
	deadline := time.Now().Add(30 * time.Second)
	for !got.Status.Failing {
		if time.Now().After(deadline) {
			t.Fatalf("the rule does not show its failing deliveries: %+v", got.Status)
		}
		time.Sleep(200 * time.Millisecond)
		if err := api.Do(context.Background(), "GET", "/api/v1/rules/"+rule.ID, nil, &got); err != nil {
			t.Fatal(err)
		}
	}
	if got.Status.LastError == "" {
		t.Fatalf("failing without a last error: %+v", got.Status)
	}
	ln, err = net.Listen("tcp", addr) // the receiver recovers
	if err != nil {
		t.Fatal(err)
	}
	wr := &webhookReceiver{secret: secret, seen: newSeenPosts(), deliveries: map[string]int{}}
	serveReceiver(t, ln, wr)
	wr.seen.waitAll(t, "webhook after kill -9", devices, 60*time.Second)
	t.Logf("%d acknowledged posts delivered after kill -9 and the receiver's recovery; duplicates %d", acked(devices), wr.duplicates())
}

// appOptions are paho options for an application login with key.
func appOptions(th *testHub, key string) *paho.ClientOptions {
	o := paho.NewClientOptions().AddBroker("tcp://" + th.MQTTAddr()).SetClientID("app-" + iothub.RandomString(6)).
		SetUsername(mqtt.AppUsername).SetPassword(key)
	o.SetAutoReconnect(false)
	o.SetConnectRetry(false)
	o.SetConnectTimeout(5 * time.Second)
	return o
}

// appClient logs an application in with key and subscribes to each filter.
func appClient(t testing.TB, th *testHub, key string, filters map[string]func([]byte)) paho.Client {
	t.Helper()
	c := connect(t, appOptions(th, key))
	for f, fn := range filters {
		tok := c.Subscribe(f, 0, func(_ paho.Client, m paho.Message) { fn(m.Payload()) })
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", f, tok.Error())
		}
		if st, ok := tok.(*paho.SubscribeToken); ok && st.Result()[f] == 0x80 {
			t.Fatalf("subscribe %s refused", f)
		}
	}
	return c
}

// An application may not subscribe to another org's product, publishes
// nothing to devices, and its session ends when its key is revoked; a
// revoked key cannot log in.
func TestAppOverMQTTRefusals(t *testing.T) {
	th := startHub(t, "")
	orgA, _, adminA := orgKey(t, th, "org-a", iothub.RoleAdmin)
	var k struct{ ID, Key string }
	do(t, th.admin, "POST", "/api/v1/orgs/"+orgA+"/apikeys", map[string]any{"name": "app", "role": "viewer"}, &k, 201)
	_, _, adminB := orgKey(t, th, "org-b", iothub.RoleAdmin)
	var prodB iothub.Product
	do(t, adminB, "POST", "/api/v1/products", map[string]any{"name": "b"}, &prodB, 201)
	devA := loadDevices(t, adminA, 1)[0]

	// A device of A listens on its command topic.
	dev := connect(t, deviceOptions("tcp://"+th.MQTTAddr(), devA.pk, devA.dk, devA.secret, sign.ModeStatic))
	got := make(chan string, 1)
	cmd := "/sys/" + devA.pk + "/" + devA.dk + "/thing/service/restart"
	dev.Subscribe(cmd, 0, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }).Wait()

	lost := make(chan struct{})
	o := appOptions(th, k.Key)
	o.SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
	app := connect(t, o)
	tok := app.Subscribe("/sys/"+prodB.ProductKey+"/+/thing/measurepoint/post", 0, func(paho.Client, paho.Message) {})
	tok.WaitTimeout(5 * time.Second)
	if st := tok.(*paho.SubscribeToken); st.Result()["/sys/"+prodB.ProductKey+"/+/thing/measurepoint/post"] != 0x80 {
		t.Fatalf("subscribing to another org's product: %v", st.Result())
	}
	app.Publish(cmd, 0, false, `{"id":"1","method":"thing.service.restart","params":{}}`).Wait()
	select {
	case m := <-got:
		t.Fatalf("an application's publish reached a device: %s", m)
	case <-time.After(500 * time.Millisecond):
	}

	do(t, adminA, "DELETE", "/api/v1/orgs/"+orgA+"/apikeys/"+k.ID, nil, nil, 204)
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("revoking the key did not end the application's session")
	}
	if err := refused(appOptions(th, k.Key)); err == nil {
		t.Fatal("an application logged in with a revoked key")
	}
	var audit struct{ Events []iothub.AuditEvent }
	do(t, adminA, "GET", "/api/v1/audit", nil, &audit, 200)
	found := false
	for _, e := range audit.Events {
		found = found || e.Kind == "app.login"
	}
	if !found {
		t.Fatalf("no app.login in the org's audit: %+v", audit.Events)
	}
}

// In a cluster (PostgreSQL and NATS), a stream consumer on one node gets
// every post devices make on the other, in order, and a rule forwarding to
// a NATS subject delivers each to a NATS subscriber.
func TestDataOutAcrossNodesAndToNATS(t *testing.T) {
	dbURL, natsURL := pgtest.Standalone(t), natstest.URL(t)
	one := startNode(t, "", dbURL, natsURL)
	two := startNode(t, joinCluster(t, one.dir), dbURL, natsURL)
	devices := loadDevices(t, one.admin, 20)

	nc, err := natsgo.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fromNATS := newSeenPosts()
	sub, err := nc.Subscribe("acme.posts", func(m *natsgo.Msg) { fromNATS.add(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	nc.Flush()
	var rule struct{ ID string }
	do(t, two.admin, "POST", "/api/v1/rules", map[string]any{"name": "to nats", "productKey": devices[0].pk,
		"kinds": []string{"measurepoints"}, "nats": map[string]any{"subject": "acme.posts"}}, &rule, 201)
	do(t, two.admin, "POST", "/api/v1/rules", map[string]any{"name": "x", "nats": map[string]any{"subject": "acme.>"}}, nil, 400)

	stream := openStream(t, two.HTTPURL(), two.AdminKey(), "kinds=measurepoints&productKey="+devices[0].pk, "")
	seen := newSeenPosts()
	go drain(stream, seen, "measurepoints")
	run := startLoad(devices, "tcp://"+one.MQTTAddr(), 20*time.Millisecond)
	time.Sleep(1500 * time.Millisecond)
	run.end(t)
	seen.waitAll(t, "stream on the other node", devices, 15*time.Second)
	fromNATS.waitAll(t, "NATS subscriber", devices, 20*time.Second)
	t.Logf("%d posts on node one: the stream on node two and the NATS subscriber got each, in order (NATS duplicates %d)",
		acked(devices), fromNATS.dups)
}

// iothub stream prints what devices post as JSON lines, from a cursor.
func TestCLIStream(t *testing.T) {
	bin := buildCLI(t)
	th := startHub(t, "")
	devices := loadDevices(t, th.admin, 2)
	run := startLoad(devices, "tcp://"+th.MQTTAddr(), 50*time.Millisecond)
	time.Sleep(500 * time.Millisecond)
	run.end(t)
	out, err := exec.Command(bin, "stream", "--server", th.HTTPURL(), "--key", th.AdminKey(), "--kinds", "measurepoints",
		"--product", devices[0].pk, "--after", "0", "-n", "5").Output()
	if err != nil {
		t.Fatalf("iothub stream: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 5 {
		t.Fatalf("iothub stream -n 5 printed %d lines:\n%s", len(lines), out)
	}
	var prev int64
	for _, l := range lines {
		var ev struct {
			ID   int64
			Kind string
			Data postSeen
		}
		if err := json.Unmarshal([]byte(l), &ev); err != nil || ev.Kind != "measurepoints" || ev.ID <= prev || ev.Data.Measurepoints.N == 0 {
			t.Fatalf("line %s (%v)", l, err)
		}
		prev = ev.ID
	}
	cmd := exec.Command(bin, "stream", "--server", th.HTTPURL(), "--key", th.AdminKey(), "--kinds", "telemetry")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "unknown kind") {
		t.Fatalf("iothub stream --kinds telemetry: %v %s", err, out)
	}
}

// History: posts read by sample time (not arrival), between from and to,
// a page at a time.
func TestTelemetryHistoryBySampleTime(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{})
	d := th.newDevice(t, p, "hist-1")
	c := connect(t, deviceOptions("tcp://"+th.MQTTAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic))
	up := "/sys/" + p.ProductKey + "/" + d.DeviceKey + "/thing/measurepoint/post"
	replies := make(chan string, 10)
	c.Subscribe(up+"_reply", 1, func(_ paho.Client, m paho.Message) { replies <- string(m.Payload()) }).Wait()
	base := int64(1700000000000)
	for i, n := range []int{5, 1, 4, 2, 3, 6} { // arrives out of sample-time order; 6 is outside [from, to)
		body := fmt.Sprintf(`{"id":"%d","method":"thing.measurepoint.post","params":{"measurepoints":{"n":%d},"time":%d}}`, i, n, base+int64(n)*1000)
		c.Publish(up, 1, false, body).Wait()
		if r := <-replies; !strings.Contains(r, `"code":200`) {
			t.Fatalf("post %d: %s", n, r)
		}
	}
	path := "/api/v1/products/" + p.ProductKey + "/devices/" + d.DeviceKey + "/telemetry"
	from, to := time.UnixMilli(base).UTC().Format(time.RFC3339), strconv.FormatInt(base+6000, 10)
	var got []int
	cursor := ""
	for page := 0; ; page++ {
		var out struct {
			Samples    []postSeen
			NextCursor string
		}
		do(t, th.admin, "GET", path+"?from="+from+"&to="+to+"&limit=2&cursor="+cursor, nil, &out, 200)
		for _, s := range out.Samples {
			got = append(got, s.Measurepoints.N)
		}
		if out.NextCursor == "" {
			break
		}
		if page > 5 {
			t.Fatal("paging does not end")
		}
		cursor = out.NextCursor
	}
	if fmt.Sprint(got) != "[1 2 3 4 5]" {
		t.Fatalf("history by sample time: %v, want [1 2 3 4 5]", got)
	}
	for _, q := range []string{"?from=yesterday", "?to=1&from=2", "?cursor=abc", "?from=1&limit=0"} {
		do(t, th.admin, "GET", path+q, nil, nil, 400)
	}
}

// A stream consumer that never reads is cut off once the hub's writes to
// it block (10 s): the hub keeps no backlog for it.
func TestStreamCutsOffAConsumerThatDoesNotRead(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{})
	d := th.newDevice(t, p, "big-1")
	conn, err := net.Dial("tcp", strings.TrimPrefix(th.HTTPURL(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /api/v1/stream?kinds=measurepoints HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer %s\r\n\r\n", th.AdminKey())
	time.Sleep(300 * time.Millisecond) // the stream is open; from here on nothing is read

	c := connect(t, deviceOptions("tcp://"+th.MQTTAddr(), p.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic))
	up := "/sys/" + p.ProductKey + "/" + d.DeviceKey + "/thing/measurepoint/post"
	blob := strings.Repeat("x", 50000)
	const posts = 300 // 15 MB: more than the socket buffers hold
	for i := 1; i <= posts; i++ {
		body := fmt.Sprintf(`{"id":"%d","method":"thing.measurepoint.post","params":{"measurepoints":{"n":%d,"blob":"%s"}}}`, i, i, blob)
		if tok := c.Publish(up, 1, false, body); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("post %d: %v", i, tok.Error())
		}
	}
	time.Sleep(12 * time.Second) // past the write deadline
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := io.Copy(io.Discard, conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the stream of a consumer that did not read is still open after %d bytes", n)
	}
	if n >= int64(posts*len(blob)) {
		t.Fatalf("the consumer got all %d bytes: it was never behind", n)
	}
	t.Logf("cut off after %d of %d bytes", n, posts*len(blob))
}
