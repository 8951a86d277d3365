package mqtt

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iothub/iothub/sign"
)

// FuzzFramer feeds the same stream whole and in arbitrary pieces: the
// framer must find the same packets either way, never panic, and fail
// both ways on the same malformed length.
func FuzzFramer(f *testing.F) {
	f.Add([]byte{0xc0, 0x00, 0x30, 0x05, 0x00, 0x01, 'a', 'x', 'y'}, []byte{1, 2})
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0x7f}, []byte{3})
	f.Add([]byte{0x30, 0x80, 0x01}, []byte{1})
	f.Fuzz(func(t *testing.T, stream, cuts []byte) {
		const limit = 4096
		collect := func(pieces [][]byte) ([]string, error) {
			var fr framer
			var got []string
			for _, p := range pieces {
				if err := fr.feed(p, func() int { return limit }, func(b []byte, _ bool) error {
					got = append(got, string(b))
					return nil
				}); err != nil {
					return got, err
				}
			}
			return got, nil
		}
		whole, werr := collect([][]byte{stream})
		var pieces [][]byte
		rest := stream
		for _, c := range cuts {
			n := min(int(c)%8, len(rest))
			pieces = append(pieces, rest[:n])
			rest = rest[n:]
		}
		pieces = append(pieces, rest)
		split, serr := collect(pieces)
		if (werr == nil) != (serr == nil) || len(whole) != len(split) {
			t.Fatalf("whole: %d packets, %v; in pieces: %d packets, %v", len(whole), werr, len(split), serr)
		}
		for i := range whole {
			if whole[i] != split[i] {
				t.Fatalf("packet %d differs: % x vs % x", i, whole[i], split[i])
			}
		}
	})
}

// clientEncode serialises a packet a test client sends.
func clientEncode(pk packets.Packet) ([]byte, error) {
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	default:
		err = fmt.Errorf("no encoder for type %d", pk.FixedHeader.Type)
	}
	return buf.Bytes(), err
}

// rawEncode is clientEncode on the test's goroutine: an error fails the test.
func rawEncode(t testing.TB, pk packets.Packet) []byte {
	t.Helper()
	b, err := clientEncode(pk)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// connectPacket is a device's CONNECT.
func connectPacket(version byte, cid, user, pass string, keepalive uint16) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: version,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: keepalive, ClientIdentifier: cid,
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(pass)}}
}

// Packets cut anywhere, down to one byte per TCP segment, are put back
// together: a login, a subscription and a publish sent byte by byte get
// their CONNACK, SUBACK, PUBACK and delivery.
func TestPacketsSplitAnywhereAreRead(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pksplit", nil)
	d := h.device(p, "dev")
	cid, user, pass := creds(t, "pksplit", "dev", d.DeviceSecret, sign.ModeStatic, sign.SHA256)
	topic := sysPrefix("pksplit", "dev") + "split/t"
	var stream []byte
	stream = append(stream, rawEncode(t, connectPacket(4, cid, user, pass, 60))...)
	stream = append(stream, rawEncode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: 4, PacketID: 1, Filters: packets.Subscriptions{{Filter: topic, Qos: 1}}})...)
	stream = append(stream, rawEncode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		ProtocolVersion: 4, PacketID: 2, TopicName: topic, Payload: bytes.Repeat([]byte("p"), 300)})...)
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	for _, b := range stream {
		if _, err := c.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Microsecond)
	}
	r := bufio.NewReader(c)
	seen := map[byte]int{}
	for seen[packets.Publish] == 0 || seen[packets.Puback] == 0 {
		typ, body := readPacket(t, r)
		seen[typ]++
		if typ == packets.Publish && !bytes.HasSuffix(body, bytes.Repeat([]byte("p"), 300)) {
			t.Fatalf("delivery % x", body)
		}
	}
	if seen[packets.Connack] != 1 || seen[packets.Suback] != 1 {
		t.Fatalf("packets seen by type: %v", seen)
	}
}

// A client silent for 1.5 keepalives is disconnected; one that pings
// stays.
func TestKeepaliveEndsSilentConnections(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkka", nil)
	for _, ping := range []bool{false, true} {
		dk := map[bool]string{false: "silent", true: "pinging"}[ping]
		d := h.device(p, dk)
		cid, user, pass := creds(t, "pkka", dk, d.DeviceSecret, sign.ModeStatic, sign.SHA256)
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(rawEncode(t, connectPacket(4, cid, user, pass, 1))); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		start := time.Now()
		_ = c.SetReadDeadline(start.Add(6 * time.Second))
		if typ, _ := readPacket(t, r); typ != packets.Connack {
			t.Fatalf("got type %d, want CONNACK", typ)
		}
		if ping {
			for range 5 {
				time.Sleep(500 * time.Millisecond)
				if _, err := c.Write(rawEncode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})); err != nil {
					t.Fatalf("pinging device cut off: %v", err)
				}
				if typ, _ := readPacket(t, r); typ != packets.Pingresp {
					t.Fatalf("got type %d, want PINGRESP", typ)
				}
			}
			continue
		}
		if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
			t.Fatalf("silent device: read %v, want the hub to close the connection", err)
		}
		t.Logf("silent device (keepalive 1 s) closed after %v", time.Since(start).Round(10*time.Millisecond))
	}
}

// What breaks the protocol ends the connection, with the reason for an
// MQTT 5 client: a second CONNECT, a QoS 2 PUBLISH (the hub grants QoS 1),
// a publish to a topic with a wildcard.
func TestProtocolViolationsEndTheConnection(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkpv", nil)
	d := h.device(p, "dev")
	cid, user, pass := creds(t, "pkpv", "dev", d.DeviceSecret, sign.ModeStatic, sign.SHA256)
	cases := []struct {
		name string
		pk   packets.Packet
		code byte
	}{
		{"second CONNECT", connectPacket(5, cid, user, pass, 30), packets.ErrProtocolViolationSecondConnect.Code},
		{"QoS 2", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, ProtocolVersion: 5, PacketID: 1,
			TopicName: sysPrefix("pkpv", "dev") + "t", Payload: []byte("x")}, packets.ErrQosNotSupported.Code},
		{"wildcard topic", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 5,
			TopicName: sysPrefix("pkpv", "dev") + "+", Payload: []byte("x")}, 0},
	}
	for _, tc := range cases {
		c, code := dialV5(t, h.addr, nil, cid, user, pass)
		if code != 0 {
			t.Fatalf("login refused: %#x", code)
		}
		if _, err := c.Write(rawEncode(t, tc.pk)); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		typ, body := readPacket(t, r)
		if typ != packets.Disconnect || len(body) == 0 || (tc.code != 0 && body[0] != tc.code) || body[0] < 0x80 {
			t.Fatalf("%s: got type %d body % x, want DISCONNECT %#x", tc.name, typ, body, tc.code)
		}
		if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
			t.Fatalf("%s: connection still open after the DISCONNECT: %v", tc.name, err)
		}
		c.Close()
	}
}

// A client asking for a persistent session finds its subscriptions again
// when it reconnects (session present); a clean start finds none.
func TestPersistentSessionKeepsSubscriptions(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkps", nil)
	d := h.device(p, "dev")
	topic := sysPrefix("pkps", "dev") + "cmd/t"
	persistent := func(o *paho.ClientOptions) { o.SetCleanSession(false) }
	first := h.connect(t, "pkps", "dev", d.DeviceSecret, persistent)
	if tok := first.Subscribe(topic, 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	first.Disconnect(100)

	got := newCollector()
	cid, user, pass := creds(t, "pkps", "dev", d.DeviceSecret, sign.ModeStatic, sign.SHA256)
	o := paho.NewClientOptions().AddBroker("tcp://" + h.addr).SetClientID(cid).SetUsername(user).SetPassword(pass).
		SetProtocolVersion(4).SetAutoReconnect(false).SetCleanSession(false).SetDefaultPublishHandler(got.handler)
	again := paho.NewClient(o)
	tok := again.Connect()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("reconnect: %v", tok.Error())
	}
	defer again.Disconnect(0)
	if !tok.(*paho.ConnectToken).SessionPresent() {
		t.Fatal("persistent session not present on reconnect")
	}
	if pt := again.Publish(topic, 1, false, "again"); !pt.WaitTimeout(5*time.Second) || pt.Error() != nil {
		t.Fatalf("publish: %v", pt.Error())
	}
	if m := got.next(t, 5*time.Second); string(m.Payload()) != "again" {
		t.Fatalf("delivery %q", m.Payload())
	}
	again.Disconnect(100)

	clean := h.connect(t, "pkps", "dev", d.DeviceSecret, got.opt)
	if pt := clean.Publish(topic, 1, false, "clean"); !pt.WaitTimeout(5*time.Second) || pt.Error() != nil {
		t.Fatalf("publish: %v", pt.Error())
	}
	select {
	case m := <-got.ch:
		t.Fatalf("a clean session received %q on a subscription of the old one", m.Payload())
	case <-time.After(300 * time.Millisecond):
	}
}

// Whatever bytes a client sends, the hub stays up, ends the bad
// connections and leaves no goroutine behind; a device logs in after.
func TestGarbageEndsOnlyItsConnection(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkgb", nil)
	d := h.device(p, "dev")
	cid, user, pass := creds(t, "pkgb", "dev", d.DeviceSecret, sign.ModeStatic, sign.SHA256)
	login := rawEncode(t, connectPacket(4, cid, user, pass, 30))
	baseline := runtime.NumGoroutine()
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 100 {
		junk := make([]byte, 1+rng.IntN(600))
		for j := range junk {
			junk[j] = byte(rng.Uint32())
		}
		if i%2 == 0 {
			junk = append(append([]byte(nil), login...), junk...) // garbage after a good login
		}
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write(junk)
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = io.Copy(io.Discard, c) // the hub closes it, or it waits for the rest of a packet
		c.Close()
	}
	eventually(t, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= baseline+5 })
	h.connect(t, "pkgb", "dev", d.DeviceSecret)
}

// Before its login a connection may not announce a packet over
// maxConnectPacket: the hub closes it at the fixed header, before any
// of it is sent. After the login the payload cap applies.
func TestOversizedPacketBeforeLoginIsRefused(t *testing.T) {
	h := newTestHub(t)
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A CONNECT whose remaining length says 1 MiB.
	if _, err := c.Write([]byte{0x10, 0x80, 0x80, 0x40}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read %v, want the hub to close the connection", err)
	}

	p := h.product("pkbig", nil)
	d := h.device(p, "dev")
	cid, user, pass := creds(t, "pkbig", "dev", d.DeviceSecret, sign.ModeStatic, sign.SHA256)
	conn, code := dialV5(t, h.addr, nil, cid, user, pass)
	defer conn.Close()
	if code != 0 {
		t.Fatalf("login refused: %#x", code)
	}
	big := bytes.Repeat([]byte("b"), 100<<10) // over maxConnectPacket, under the payload cap
	topic := sysPrefix("pkbig", "dev") + "big"
	var stream []byte
	stream = append(stream, rawEncode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: 5, PacketID: 1, Filters: packets.Subscriptions{{Filter: topic}}})...)
	stream = append(stream, rawEncode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish},
		ProtocolVersion: 5, TopicName: topic, Payload: big})...)
	if _, err := conn.Write(stream); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	for {
		typ, body := readPacket(t, r)
		if typ == packets.Publish {
			if !bytes.HasSuffix(body, big) {
				t.Fatalf("delivery of %d bytes", len(body))
			}
			return
		}
	}
}

// An MQTT 5 client that takes at most 2 QoS 1 deliveries unacknowledged
// (Receive Maximum) gets the third only after acknowledging one.
func TestDeliveriesRespectTheClientsReceiveMaximum(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkrm", nil)
	d := h.device(p, "dev")
	cid, user, pass := creds(t, "pkrm", "dev", d.DeviceSecret, sign.ModeStatic, sign.SHA256)
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	login := connectPacket(5, cid, user, pass, 60)
	login.Properties.ReceiveMaximum = 2
	topic := sysPrefix("pkrm", "dev") + "t"
	write := func(pk packets.Packet) {
		t.Helper()
		if _, err := c.Write(rawEncode(t, pk)); err != nil {
			t.Fatal(err)
		}
	}
	write(login)
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 5, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: topic, Qos: 1}}})
	for i := range 3 {
		write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 5,
			PacketID: uint16(100 + i), TopicName: topic, Payload: []byte{byte('a' + i)}})
	}
	r := bufio.NewReader(c)
	var ids []uint16
	readUntil := func(deliveries int, within time.Duration) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(within))
		for len(ids) < deliveries {
			b, err := r.ReadByte()
			if err != nil {
				return // the deadline: fewer deliveries than asked
			}
			_ = r.UnreadByte()
			if b>>4 != packets.Publish {
				readPacket(t, r)
				continue
			}
			_, body := readPacket(t, r)
			tl := int(body[0])<<8 | int(body[1])
			ids = append(ids, uint16(body[2+tl])<<8|uint16(body[3+tl]))
		}
	}
	readUntil(3, 500*time.Millisecond)
	if len(ids) != 2 {
		t.Fatalf("%d deliveries before any PUBACK, want the receive maximum 2", len(ids))
	}
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: 5, PacketID: ids[0]})
	readUntil(3, 5*time.Second)
	if len(ids) != 3 {
		t.Fatalf("%d deliveries after one PUBACK, want 3", len(ids))
	}
}

// A connection that never sends its CONNECT is closed once connectTimeout
// has passed (the sweep checks every second); it held no goroutine.
func TestSilentConnectionIsClosedAfterTheConnectTimeout(t *testing.T) {
	t.Parallel()
	h := newTestHub(t)
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(connectTimeout + 5*time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read %v after %v, want the hub to close the connection", err, time.Since(start))
	}
	if waited := time.Since(start); waited < connectTimeout {
		t.Fatalf("closed after %v, before the connect timeout of %v", waited, connectTimeout)
	}
	t.Logf("closed %v after the accept", time.Since(start).Round(100*time.Millisecond))
}
