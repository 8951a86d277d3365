package mqtt

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

// A device floods its own topic at QoS 1 while it does not read for a
// while (a slow subscriber), then reads everything. Hundreds of deliveries
// wait unacknowledged on the hub; every message the hub acknowledged must
// still be delivered.
func TestQoS1FloodOnSlowSubscriberLosesNothing(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkq", nil)
	d := h.device(p, "dev")
	topic := sysPrefix("pkq", "dev") + "flood/t"
	_, r, write := rawSubscriber(t, h, d, topic, 1)
	// One goroutine writes: the publishes, and the PUBACKs for deliveries
	// as the reader asks for them (the reader never blocks on a write).
	// Publish ids stay apart from the hub's delivery ids, which makes the
	// packets easy to tell apart here.
	const firstID = 40000
	const n = 900 // × 4 KiB: more than the socket buffers hold, under maxUnacked
	acks := make(chan uint16, n)
	done := make(chan struct{})
	go func() {
		defer close(done)
		payload := make([]byte, 4<<10)
		sent := 0
		for {
			select {
			case id, ok := <-acks:
				if !ok {
					return
				}
				write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: 4, PacketID: id})
				continue
			default:
			}
			if sent == n {
				id, ok := <-acks
				if !ok {
					return
				}
				write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: 4, PacketID: id})
				continue
			}
			binary.BigEndian.PutUint32(payload, uint32(sent))
			write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 4,
				TopicName: topic, PacketID: uint16(firstID + sent), Payload: payload})
			sent++
		}
	}()

	time.Sleep(500 * time.Millisecond) // the slow subscriber reads nothing yet
	acked := map[uint16]bool{}
	delivered := map[uint32]bool{}
	for len(acked) < n || len(delivered) < len(acked) {
		typ, body := readPacket(t, r)
		switch typ {
		case packets.Puback:
			acked[binary.BigEndian.Uint16(body)] = true
		case packets.Publish:
			tl := int(binary.BigEndian.Uint16(body))
			id := binary.BigEndian.Uint16(body[2+tl:])
			delivered[binary.BigEndian.Uint32(body[4+tl:])] = true
			acks <- id
		}
	}
	close(acks)
	<-done
	for id := range acked {
		if !delivered[uint32(id-firstID)] {
			t.Fatalf("message %d acknowledged but never delivered (%d acked, %d delivered)", id-firstID, len(acked), len(delivered))
		}
	}
	t.Logf("%d messages acknowledged and delivered", n)
}

// rawSubscriber logs d in with a bare MQTT 3.1.1 connection and subscribes
// it to topic at qos. write sends a packet (errors fail the test).
func rawSubscriber(t *testing.T, h *testHub, d *iothub.Device, topic string, qos byte) (net.Conn, *bufio.Reader, func(packets.Packet)) {
	t.Helper()
	cid, user, pass := creds(t, d.ProductKey, d.DeviceKey, d.DeviceSecret, sign.ModeStatic, sign.SHA256)
	conn, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(conn)
	write := func(pk packets.Packet) { // also called from the tests' writer goroutines: errors do not stop them
		b, err := clientEncode(pk)
		if err == nil {
			_, err = conn.Write(b)
		}
		if err != nil {
			t.Error(err)
		}
	}
	write(connectPacket(4, cid, user, pass, 60))
	if typ, body := readPacket(t, r); typ != packets.Connack || body[1] != 0 {
		t.Fatalf("CONNACK: type %d body % x", typ, body)
	}
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: topic, Qos: qos}}})
	if typ, body := readPacket(t, r); typ != packets.Suback || body[2] != qos {
		t.Fatalf("SUBACK: type %d body % x", typ, body)
	}
	return conn, r, write
}

// A routed delivery at QoS 1 gets a packet id of the hub's and waits in
// the connection's inflight set until its PUBACK; at QoS 0 nothing waits.
func TestQoS1DeliveryWaitsForItsPuback(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pko", nil)
	for _, qos := range []byte{0, 1} {
		d := h.device(p, "q"+string('0'+rune(qos)))
		topic := sysPrefix(d.ProductKey, d.DeviceKey) + "t"
		_, r, write := rawSubscriber(t, h, d, topic, qos)
		ss := h.srv.deviceSession(iothub.DeviceID{ProductKey: d.ProductKey, DeviceKey: d.DeviceKey})
		if ss == nil {
			t.Fatal("no session")
		}
		write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 4,
			TopicName: topic, PacketID: 7, Payload: []byte("routed")})
		hdr := byte(0)
		var body []byte
		for hdr != packets.Publish {
			hdr, body = readPacket(t, r)
		}
		tl := int(binary.BigEndian.Uint16(body))
		if qos == 0 {
			if string(body[2+tl:]) != "routed" || ss.cl.unacked() != 0 {
				t.Fatalf("QoS 0 delivery % x, %d waiting", body, ss.cl.unacked())
			}
			continue
		}
		id := binary.BigEndian.Uint16(body[2+tl:])
		if string(body[2:2+tl]) != topic || id == 0 || string(body[4+tl:]) != "routed" {
			t.Fatalf("delivery % x", body)
		}
		if n := ss.cl.unacked(); n != 1 {
			t.Fatalf("%d deliveries waiting, want the one written until its PUBACK", n)
		}
		write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: 4, PacketID: id})
		eventually(t, "inflight entry completed by the PUBACK", func() bool { return ss.cl.unacked() == 0 })
	}
}

// readPacket reads one MQTT packet and returns its type and body; it fails
// the test when the connection ends first (a lost message shows as a
// timeout here).
func readPacket(t *testing.T, r *bufio.Reader) (byte, []byte) {
	t.Helper()
	b, err := r.ReadByte()
	if err != nil {
		t.Fatalf("reading: %v", err)
	}
	n, mul := 0, 1
	for {
		c, err := r.ReadByte()
		if err != nil {
			t.Fatalf("reading: %v", err)
		}
		n += int(c&127) * mul
		if c&128 == 0 {
			break
		}
		mul *= 128
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatalf("reading: %v", err)
	}
	return b >> 4, body
}

// A client that reads its deliveries but never acknowledges them is closed
// once it holds more than maxUnacked: the hub's memory for it is bounded.
func TestUnackedDeliveriesCloseTheSession(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pku", nil)
	d := h.device(p, "dev")
	topic := sysPrefix("pku", "dev") + "t"
	conn, r, write := rawSubscriber(t, h, d, topic, 1)
	go func() {
		for i := range maxUnacked + 100 {
			write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 4,
				TopicName: topic, PacketID: uint16(40000 + i), Payload: []byte("x")}) // ids apart from the deliveries'
		}
	}()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, err := r.ReadByte(); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				ss := h.srv.deviceSession(iothub.DeviceID{ProductKey: "pku", DeviceKey: "dev"})
				t.Fatalf("session still open with every delivery unacknowledged (%d stored, established %v)", ss.cl.unacked(), ss.established.Load())
			}
			break
		}
	}
	eventually(t, "session forgotten", func() bool { return !h.srv.Online("pku", "dev") })
}
