package mqtt

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// conn is one MQTT connection: a device's, a gateway's (with its
// sub-devices riding on it) or an application's. It is built to cost
// little while idle, which is what most devices are: no goroutine (the
// poller starts a reader when bytes arrive and the reader ends when it
// has read them all), no buffer (reads borrow a pooled one, writes encode
// into a pooled one), and a partial packet is the only input it keeps.
type conn struct {
	srv    *Server
	raw    syscall.RawConn // the socket, for readiness and non-blocking reads
	in     io.Reader       // decrypted input: the tls.Conn, or the socket
	out    io.Writer       // where packets are written: the tls.Conn, or the socket
	sock   net.Conn        // closed to end the connection
	tls    *tls.Conn       // nil for plain TCP
	remote string
	slot   uint32 // the poller's slot and its generation
	gen    uint32

	// Fixed by the CONNECT, before the session is visible to others.
	id              string // client identifier (renamed after the device by the login)
	version         byte   // 4: MQTT 3.1.1, 5: MQTT 5
	clean           bool
	keepalive       uint16
	serverKeepalive bool   // keepalive imposed by the hub: said in an MQTT 5 CONNACK
	sessionExpiry   uint32 // seconds the session outlives the connection
	maxPacket       uint32 // the client's maximum packet size (0: no limit)
	receiveMax      int    // QoS 1 deliveries the client takes unacknowledged (MQTT 5; 0: no limit)
	will            *packets.Packet

	frame framer // input not yet a whole packet; its reader's only

	wmu   sync.Mutex    // one write at a time
	wbuf  *bytes.Buffer // output gathered while held (pooled; nil when none)
	holds int           // holds under way; output leaves when the last ends

	mu        sync.Mutex
	reading   bool
	closed    bool
	finished  bool
	takenOver bool // replaced by a login with the same client identifier
	graceful  bool // ended by the client's DISCONNECT: no will
	subs      map[string]packets.Subscription
	inflight  map[uint16]packets.Packet // QoS 1 deliveries not yet acknowledged
	waiting   []packets.Packet          // those of them not yet sent: over the client's receive maximum
	nextID    uint16
	connected atomic.Bool  // logged in: the session is live
	lastRead  atomic.Int64 // unix nanoseconds of the last input (of the accept, before any)
}

// errWouldBlock is a non-blocking read finding no input. It is a
// temporary net.Error, which crypto/tls leaves the connection usable after.
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "mqtt: no input" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// errConnClosed is a write to a closed connection.
var errConnClosed = errors.New("mqtt: connection closed")

// nbSocket reads the socket without waiting once the TLS handshake is
// done (blocking is set only during it) and writes through w, which
// bounds every write.
type nbSocket struct {
	raw      syscall.RawConn
	w        net.Conn
	blocking bool
}

func (s *nbSocket) Read(p []byte) (int, error) {
	if s.blocking {
		return s.w.Read(p)
	}
	var n int
	var errno error
	if err := s.raw.Read(func(fd uintptr) bool {
		n, errno = syscall.Read(int(fd), p)
		return true
	}); err != nil {
		return 0, err
	}
	switch {
	case errno == syscall.EAGAIN:
		return 0, errWouldBlock
	case errno != nil:
		return 0, errno
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	return n, nil
}

func (s *nbSocket) Write(p []byte) (int, error)        { return s.w.Write(p) }
func (s *nbSocket) Close() error                       { return s.w.Close() }
func (s *nbSocket) LocalAddr() net.Addr                { return s.w.LocalAddr() }
func (s *nbSocket) RemoteAddr() net.Addr               { return s.w.RemoteAddr() }
func (s *nbSocket) SetDeadline(t time.Time) error      { return s.w.SetDeadline(t) }
func (s *nbSocket) SetReadDeadline(t time.Time) error  { return s.w.SetReadDeadline(t) }
func (s *nbSocket) SetWriteDeadline(t time.Time) error { return s.w.SetWriteDeadline(t) }

// Pools of the buffers a connection borrows while it reads or writes.
var (
	readBufs   = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}
	encodeBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}
)

// readers hands connections with input to reader goroutines that are
// waiting for work, so that a busy hub reuses goroutines whose stacks have
// already grown to what serving a packet takes instead of starting (and
// growing) one per input. There are as many as the input has needed at
// once lately: a reader waits readerIdle for more work and then ends, so
// an idle hub keeps none.
var readers = make(chan *conn)

const readerIdle = 2 * time.Second

// dispatch runs c's reader on a waiting goroutine, or a new one.
func dispatch(c *conn) {
	select {
	case readers <- c:
	default:
		go reader(c)
	}
}

func reader(c *conn) {
	idle := time.NewTimer(readerIdle)
	defer idle.Stop()
	for {
		c.readable()
		idle.Reset(readerIdle)
		select {
		case c = <-readers:
		case <-idle.C:
			return
		}
	}
}

// readable reads everything the connection has, handles each complete
// packet in order, and re-arms the connection; the poller runs it on a
// goroutine of its own.
func (c *conn) readable() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.reading = true
	c.mu.Unlock()
	buf := readBufs.Get().(*[]byte)
	err := c.readAll(*buf)
	readBufs.Put(buf)
	if err != nil && !errors.Is(err, errWouldBlock) {
		c.fail(err)
	}
	c.mu.Lock()
	c.reading = false
	closed := c.closed
	if !closed {
		if err := c.srv.poll.rearm(c); err != nil {
			c.mu.Unlock()
			c.close(err)
			return
		}
	}
	c.mu.Unlock()
	if closed {
		c.finish()
	}
}

// readAll reads until the socket has nothing more; it returns
// errWouldBlock then, or why the connection must end. Over plain TCP a
// read that did not fill the buffer took everything there was: the
// poller is level-triggered and reports what arrives later, so the read
// that would only say "nothing more" is skipped. TLS reads on, since
// crypto/tls may hold whole records it has not returned yet.
func (c *conn) readAll(buf []byte) error {
	for {
		n, err := c.in.Read(buf)
		if n > 0 {
			c.lastRead.Store(time.Now().UnixNano())
			c.hold() // the answers to this read leave together
			perr := c.frame.feed(buf[:n], c.inboundLimit, c.handle)
			c.release()
			if perr != nil {
				return perr
			}
			if c.tls == nil && n < len(buf) && err == nil {
				return errWouldBlock
			}
		}
		if err != nil {
			return err
		}
		if c.isClosed() {
			return errConnClosed
		}
	}
}

// framer splits a byte stream into MQTT packets. It keeps the start of
// an incomplete packet and nothing else.
type framer struct {
	partial []byte
	need    int // the partial packet's full size, once known
}

// feed passes each complete packet in data to packet, in order: borrowed
// packets point into data, the others are the framer's own copy. A
// packet over limit() bytes (asked at each packet: it grows after the
// login), or a malformed length, is an error.
func (f *framer) feed(data []byte, limit func() int, packet func(b []byte, borrowed bool) error) error {
	for len(data) > 0 {
		if f.partial == nil {
			size, _, ok, err := packetSize(data, limit())
			if err != nil {
				return err
			}
			if ok && size <= len(data) {
				if err := packet(data[:size], true); err != nil {
					return err
				}
				data = data[size:]
				continue
			}
			// Grown as bytes arrive, not to the size the header claims:
			// a client must send a packet to make the hub hold it.
			f.partial, f.need = make([]byte, 0, len(data)), size
		}
		if f.need == 0 { // the fixed header is still incomplete
			f.partial = append(f.partial, data[0])
			data = data[1:]
			size, _, ok, err := packetSize(f.partial, limit())
			if err != nil {
				return err
			}
			if ok {
				f.need = size
			}
		} else {
			take := min(f.need-len(f.partial), len(data))
			f.partial = append(f.partial, data[:take]...)
			data = data[take:]
		}
		if f.need > 0 && len(f.partial) == f.need {
			pk := f.partial
			f.partial, f.need = nil, 0
			if err := packet(pk, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// maxConnectPacket caps the packets of a connection not yet logged in:
// a CONNECT is small, and a stranger may not make the hub hold more.
const maxConnectPacket = 64 << 10

// inboundLimit is the largest packet the connection may send now.
func (c *conn) inboundLimit() int {
	if !c.connected.Load() {
		return maxConnectPacket
	}
	return c.srv.maxPacket
}

// packetSize reads a fixed header: the whole packet's size and the
// header's, or ok false while the header is incomplete.
func packetSize(b []byte, limit int) (size, header int, ok bool, err error) {
	remaining, mul := 0, 1
	for i := 1; i < 5; i++ {
		if i >= len(b) {
			return 0, 0, false, nil
		}
		remaining += int(b[i]&0x7f) * mul
		if b[i]&0x80 == 0 {
			size = 1 + i + remaining
			if size > limit {
				return 0, 0, false, packets.ErrPacketTooLarge
			}
			return size, i + 1, true, nil
		}
		mul <<= 7
	}
	return 0, 0, false, packets.ErrMalformedVariableByteInteger
}

// handle decodes one whole packet and serves it. borrowed packets live
// in a reused buffer and are copied first, since a packet's payload and
// strings point into its bytes.
func (c *conn) handle(b []byte, borrowed bool) error {
	var fh packets.FixedHeader
	if err := fh.Decode(b[0]); err != nil {
		return err
	}
	_, hdr, _, _ := packetSize(b, len(b))
	body := b[hdr:]
	if borrowed {
		body = append([]byte(nil), body...)
	}
	fh.Remaining = len(body)
	return c.srv.serve(c, packets.Packet{FixedHeader: fh, ProtocolVersion: c.version}, body)
}

// holdLimit is how much output a hold gathers before it is written anyway.
const holdLimit = 64 << 10

// writePacket encodes pk and writes it, at once or, while the connection
// is held, when the last hold is released: the answers to a whole read
// (PUBACKs, deliveries) or to a whole commit then leave in one write (one
// TLS record, one system call) instead of one each. Packets leave in the
// order writePacket was called. A write that fails or stalls ends the
// connection.
func (c *conn) writePacket(pk packets.Packet) error {
	if c.isClosed() {
		return errConnClosed
	}
	pk.ProtocolVersion = c.version
	c.wmu.Lock()
	if c.wbuf == nil {
		c.wbuf = encodeBufs.Get().(*bytes.Buffer)
		c.wbuf.Reset()
	}
	start := c.wbuf.Len()
	err := encode(&pk, c.wbuf)
	if err == nil && c.maxPacket > 0 && uint32(c.wbuf.Len()-start) > c.maxPacket {
		err = packets.ErrPacketTooLarge // [MQTT-3.1.2-24]: not sent
	}
	if err != nil {
		c.wbuf.Truncate(start)
		c.wmu.Unlock()
		return err
	}
	if c.holds > 0 && c.wbuf.Len() < holdLimit {
		c.wmu.Unlock()
		return nil
	}
	err = c.flushLocked()
	c.wmu.Unlock()
	if err != nil {
		c.close(err)
	}
	return err
}

// flushLocked writes the gathered output and gives its buffer back, so
// that an idle connection holds none; c.wmu held.
func (c *conn) flushLocked() error {
	if c.wbuf == nil {
		return nil
	}
	var err error
	if c.wbuf.Len() > 0 {
		_, err = c.out.Write(c.wbuf.Bytes())
	}
	if c.wbuf.Cap() <= holdLimit*2 {
		encodeBufs.Put(c.wbuf)
	}
	c.wbuf = nil
	return err
}

// hold gathers the connection's output until the matching release.
func (c *conn) hold() {
	c.wmu.Lock()
	c.holds++
	c.wmu.Unlock()
}

// release ends a hold; the last one writes what was gathered.
func (c *conn) release() {
	c.wmu.Lock()
	c.holds--
	var err error
	if c.holds == 0 {
		err = c.flushLocked()
	}
	c.wmu.Unlock()
	if err != nil {
		c.close(err)
	}
}

// flush writes what holds have gathered so far, before the caller waits
// on something that may take a while.
func (c *conn) flush() {
	c.wmu.Lock()
	err := c.flushLocked()
	c.wmu.Unlock()
	if err != nil {
		c.close(err)
	}
}

// encode serialises the packets the hub sends.
func encode(pk *packets.Packet, buf *bytes.Buffer) error {
	switch pk.FixedHeader.Type {
	case packets.Connack:
		return pk.ConnackEncode(buf)
	case packets.Publish:
		return pk.PublishEncode(buf)
	case packets.Puback:
		return pk.PubackEncode(buf)
	case packets.Suback:
		return pk.SubackEncode(buf)
	case packets.Unsuback:
		return pk.UnsubackEncode(buf)
	case packets.Pingresp:
		return pk.PingrespEncode(buf)
	case packets.Disconnect:
		return pk.DisconnectEncode(buf)
	}
	return packets.ErrNoValidPacketAvailable
}

// isClosed reports whether the connection has ended.
func (c *conn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// close ends the connection; the session ends once no reader runs.
func (c *conn) close(error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	reading := c.reading
	c.mu.Unlock()
	c.srv.poll.remove(c)
	if c.wmu.TryLock() { // a writer under way: the socket's close ends it
		_ = c.flushLocked() // what was answered before the end (a refused CONNACK, a DISCONNECT) still leaves
		c.wmu.Unlock()
	}
	_ = c.sock.Close()
	if !reading {
		c.finish()
	}
}

// disconnect ends the connection from the hub's side, telling an MQTT 5
// client why (a 3.1.1 client has no server DISCONNECT).
func (c *conn) disconnect(code packets.Code) {
	if c.connected.Load() && c.version == 5 { // a DISCONNECT only follows a CONNACK
		_ = c.writePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
			ReasonCode:  code.Code,
		})
	}
	c.close(code)
}

// finish ends the session of a closed connection, once.
func (c *conn) finish() {
	c.mu.Lock()
	if c.finished {
		c.mu.Unlock()
		return
	}
	c.finished = true
	c.mu.Unlock()
	c.srv.sessionEnded(c)
}

// overdue reports whether c is past its deadline: the CONNECT within
// connectTimeout of the accept, then input at least every 1.5 keepalives.
// The sweep asks it of every connection once a second, so a connection
// needs no timer of its own and input costs one atomic store.
func (c *conn) overdue(now time.Time) bool {
	silent := now.Sub(time.Unix(0, c.lastRead.Load()))
	if !c.connected.Load() {
		return silent >= connectTimeout
	}
	return silent >= time.Duration(c.keepalive)*1500*time.Millisecond
}

// expire ends a connection past its deadline.
func (c *conn) expire() {
	if !c.connected.Load() {
		c.srv.met.kicks.WithLabelValues("connect_timeout").Inc()
		c.close(errors.New("mqtt: no CONNECT in time"))
		return
	}
	c.srv.met.kicks.WithLabelValues("keepalive").Inc()
	c.disconnect(packets.ErrKeepAliveTimeout)
}

// nextPacketID returns a free packet id for a QoS 1 delivery; c.mu held.
func (c *conn) nextPacketID() (uint16, bool) {
	for range 65535 {
		c.nextID++
		if c.nextID == 0 {
			c.nextID = 1
		}
		if _, used := c.inflight[c.nextID]; !used {
			return c.nextID, true
		}
	}
	return 0, false
}

// subscriptions counts the topic filters the connection holds.
func (c *conn) subscriptions() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.subs)
}

// unacked counts the QoS 1 deliveries waiting for their PUBACK.
func (c *conn) unacked() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.inflight)
}
