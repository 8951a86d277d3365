package mqtt

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

// FuzzLoginTimestamp: any signed login timestamp against a freshness
// window: no panic, and only numbers within the window pass.
func FuzzLoginTimestamp(f *testing.F) {
	now := time.UnixMilli(1721000000123)
	for _, s := range []string{"1721000000123", "1721000000123.4568", "1548753362502", "", "abc", "NaN", "Inf", "-1e400", "0x1p40", " 1721000000123"} {
		f.Add(s)
	}
	s := &Server{cfg: Config{LoginMaxSkew: time.Minute}}
	f.Fuzz(func(t *testing.T, ts string) {
		if !s.fresh(ts, now) {
			return
		}
		ms, err := strconv.ParseFloat(ts, 64)
		if err != nil || ms < float64(now.Add(-time.Minute).UnixMilli()) || ms > float64(now.Add(time.Minute).UnixMilli()) {
			t.Fatalf("timestamp %q accepted", ts)
		}
	})
}

func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`{"id":"1","version":"1.0","method":"thing.measurepoint.post","params":{"measurepoints":{"t":1}}}`,
		`{"id":12,"method":"m","params":[]}`, `{"id":null,"method":"m"}`, `{"id":{},"method":"m"}`,
		`{"id":"1",`, ``, ` `, `[]`, `"x"`, `{"method":""}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRequest(b, 4096)
		if err != nil {
			re, ok := err.(*requestError)
			if !ok || (re.Code != codeEmpty && re.Code != codeTooLarge && re.Code != codeBadFormat) {
				t.Fatalf("error %v is not a reply code", err)
			}
			return
		}
		if r.Method == "" || len(b) > 4096 {
			t.Fatalf("accepted %q", b)
		}
		if r.ID != nil {
			var v any
			if json.Unmarshal(r.ID, &v) != nil {
				t.Fatalf("id %q is not JSON", r.ID)
			}
			switch v.(type) {
			case string, float64:
			default:
				t.Fatalf("id %q is neither string nor number", r.ID)
			}
		}
		// The reply built from it is valid JSON.
		out, err := json.Marshal(replyEnvelope{ID: r.ID, Code: 200})
		if r.ID != nil && (err != nil || !json.Valid(out)) {
			t.Fatalf("reply for %q: %v", b, err)
		}
	})
}

// BenchmarkACL is the access rule on a publish and on a delivery.
func BenchmarkACL(b *testing.B) {
	ss := &session{sysPrefix: sysPrefix("pk8Hc2LxQ0", "SN-000123456"), extPrefix: extPrefix("pk8Hc2LxQ0", "SN-000123456")}
	own := "/sys/pk8Hc2LxQ0/SN-000123456/thing/measurepoint/post"
	other := "/sys/pk8Hc2LxQ0/SN-000123457/thing/measurepoint/post"
	b.ReportAllocs()
	for b.Loop() {
		if !ss.allow(own, true) || ss.allow(other, false) {
			b.Fatal("wrong answer")
		}
	}
}

// BenchmarkACLCheck is the access rule of a publish through the session
// index, with 10,000 sessions in it.
func BenchmarkACLCheck(b *testing.B) {
	s, clients := benchServer(b, 10000)
	cl := clients[len(clients)/2]
	topic := s.lookup(cl).sysPrefix + "thing/measurepoint/post"
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if ss := s.lookup(cl); ss == nil || !s.allowed(ss, topic, true) {
				b.Fatal("denied")
			}
		}
	})
}

// BenchmarkSessionLookup finds a device's live session (the Call path).
func BenchmarkSessionLookup(b *testing.B) {
	s, _ := benchServer(b, 10000)
	dev := iothub.DeviceID{ProductKey: "pkbench", DeviceKey: "dev5000"}
	b.ReportAllocs()
	for b.Loop() {
		if s.deviceSession(dev) == nil {
			b.Fatal("missing")
		}
	}
}

func benchServer(b *testing.B, n int) (*Server, []*conn) {
	h := newTestHub(b)
	clients := make([]*conn, n)
	for i := range n {
		dk := "dev" + strconv.Itoa(i)
		cl := &conn{srv: h.srv, id: dk}
		clients[i] = cl
		h.srv.register(&session{cl: cl, dev: iothub.DeviceID{ProductKey: "pkbench", DeviceKey: dk},
			sysPrefix: sysPrefix("pkbench", dk), extPrefix: extPrefix("pkbench", dk)})
	}
	return h.srv, clients
}

// BenchmarkConnectAuth is the securemode 2 decision of a CONNECT: parse,
// product and device read (from the login cache, or from SQLite with the
// cache off), product login policy, signature.
func BenchmarkConnectAuth(b *testing.B) {
	b.Run("cached", func(b *testing.B) { benchConnectAuth(b, true) })
	b.Run("store", func(b *testing.B) { benchConnectAuth(b, false) })
}

func benchConnectAuth(b *testing.B, cached bool) {
	h := newTestHub(b)
	if !cached {
		h.srv.reg = nil
	}
	p := h.product("pkauth", nil)
	d := h.device(p, "dev")
	cid, user, pass := creds(b, "pkauth", "dev", d.DeviceSecret, sign.ModeStatic, sign.SHA256)
	cl := &conn{srv: h.srv, id: cid}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		l, err := sign.ParseLogin(cid, user)
		if err != nil {
			b.Fatal(err)
		}
		if _, ref := h.srv.loginStatic(ctx, cl, l, pass, "127.0.0.1", time.Now()); ref != nil {
			b.Fatal(ref.reason)
		}
	}
}

// BenchmarkLoginRoundTrip is a whole secret login over TCP as a device
// sees it: dial, MQTT 5 CONNECT, CONNACK, close (which logs it out), from
// 8 clients at once over 1,000 devices. Every login's online, offline and
// audit writes happen too (batched, off the CONNACK path).
func BenchmarkLoginRoundTrip(b *testing.B) {
	h := newTestHub(b)
	p := h.product("pkrt", nil)
	type login struct{ cid, user, pass string }
	logins := make([]login, 1000)
	for i := range logins {
		d := h.device(p, fmt.Sprintf("d%04d", i))
		cid, user, pass := creds(b, "pkrt", d.DeviceKey, d.DeviceSecret, sign.ModeStatic, sign.SHA256)
		logins[i] = login{cid, user, pass}
	}
	var next atomic.Int64
	b.SetParallelism(4) // 8 goroutines on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l := logins[next.Add(1)%int64(len(logins))]
			if code := connectV5(b, h.addr, nil, l.cid, l.user, l.pass); code != 0 {
				b.Errorf("CONNACK %#x", code)
				return
			}
		}
	})
}

// BenchmarkIdleSessionMemory logs in b.N raw MQTT 3.1.1 connections and
// reports the heap and stack the hub holds per idle session (the raw
// clients hold only their sockets).
func BenchmarkIdleSessionMemory(b *testing.B) { benchIdleSessions(b, false) }

// BenchmarkIdleSessionMemoryTLS is the same over TLS 1.3; the figure
// includes the clients' tls.Conn state, which lives in the same process.
func BenchmarkIdleSessionMemoryTLS(b *testing.B) { benchIdleSessions(b, true) }

func benchIdleSessions(b *testing.B, useTLS bool) {
	var opts []hubOption
	if useTLS {
		opts = append(opts, withPKI)
	}
	h := newTestHub(b, opts...)
	var tc *tls.Config
	if useTLS {
		tc = h.clientTLS(b, nil)
	}
	p := h.product("pkmem", nil)
	n := b.N
	type dev struct{ cid, user, pass string }
	devs := make([]dev, n)
	for i := range n {
		d := h.device(p, "d"+strconv.Itoa(i))
		cid, user, pass := creds(b, "pkmem", d.DeviceKey, d.DeviceSecret, sign.ModeStatic, sign.SHA256)
		devs[i] = dev{cid, user, pass}
	}
	h.srv.flushTouches(context.Background())
	before, beforeStack := memInUse()
	goroutines := runtime.NumGoroutine()
	b.ResetTimer()
	conns := make([]net.Conn, 0, n)
	for _, d := range devs {
		addr := h.addr
		if useTLS {
			addr = h.tlsAddr
		}
		c := rawConnect(b, addr, tc, d.cid, d.user, d.pass)
		conns = append(conns, c)
	}
	b.StopTimer()
	after, afterStack := memInUse()
	b.ReportMetric(float64(after-before)/float64(n), "bytes/session")
	b.ReportMetric(float64(afterStack-beforeStack)/float64(n), "stack-bytes/session")
	b.ReportMetric(float64(runtime.NumGoroutine()-goroutines)/float64(n), "goroutines/session")
	for _, c := range conns {
		c.Close()
	}
}

// memInUse returns the heap plus stack in use, and the stack alone.
func memInUse() (int64, int64) {
	var m runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse), int64(m.StackInuse)
}

// rawConnect logs in over a bare TCP connection with a 3.1.1 CONNECT.
func rawConnect(tb testing.TB, addr string, tc *tls.Config, cid, user, pass string) net.Conn {
	var c net.Conn
	var err error
	if tc != nil {
		c, err = tls.Dial("tcp", addr, tc)
	} else {
		c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := c.Write(rawEncode(tb, connectPacket(4, cid, user, pass, 120))); err != nil {
		tb.Fatal(err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil || ack[3] != 0 {
		tb.Fatalf("CONNACK % x: %v", ack, err)
	}
	return c
}

// BenchmarkMeasurepointPost is the upstream path end to end: a paho client
// posts measurepoints (QoS 0) and the hub parses, checks, queues them for
// the batching writer and answers each on _reply; the op ends when every
// reply arrived and every sample is in SQLite.
func BenchmarkMeasurepointPost(b *testing.B) {
	h := newTestHub(b)
	p := h.product("pkpost", nil)
	d := h.device(p, "dev")
	replies := make(chan struct{}, 1024)
	c := h.connect(b, "pkpost", "dev", d.DeviceSecret, func(o *pahoOptions) {
		o.SetDefaultPublishHandler(func(pahoClient, pahoMessage) { replies <- struct{}{} })
	})
	payload := []byte(`{"id":"1","version":"1.0","method":"thing.measurepoint.post","params":{"measurepoints":{"temp":21.5,"power":{"value":1,"quality":9}}}}`)
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for range b.N {
			c.Publish("/sys/pkpost/dev/thing/measurepoint/post", 0, false, payload)
		}
	}()
	for range b.N {
		<-replies
	}
	h.srv.samples.Close() // waits for the last batch
	b.StopTimer()
	rows, err := h.db.RecentSamples(context.Background(), "pkpost", "dev", 1)
	if err != nil || len(rows) != 1 {
		b.Fatalf("samples not stored: %v", err)
	}
}
