package mqtt

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// What a device may not do to the hub: hold a connection without ever
// being heard from, or stop reading while the hub writes to it.
const (
	// maxKeepalive is the longest keepalive the hub grants, in seconds. A
	// client asking for more, or for none (0), gets this; MQTT 5 clients
	// are told so in the CONNACK (Server Keep Alive). A connection silent
	// for 1.5 keepalives is closed (conn.expire).
	maxKeepalive = 300
	// writeStall bounds how long a write to a device may make no
	// progress: each writeChunk must be taken within it, so a device
	// taking its downstream traffic slower than that is disconnected.
	writeStall = 5 * time.Second
	writeChunk = 16 << 10
)

// clampKeepalive applies maxKeepalive to a connecting client.
func clampKeepalive(c *conn) {
	if c.keepalive == 0 || c.keepalive > maxKeepalive {
		c.keepalive = maxKeepalive
		c.serverKeepalive = true
	}
}

// deadlineConn gives every write to a device a deadline and closes the
// connection when one passes: a peer that does not read cannot hold the
// goroutines writing to it (routed messages, service calls, replies).
type deadlineConn struct {
	net.Conn
	stalled   func() // counts the disconnection
	closeOnce sync.Once
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(writeStall))
		m, err := c.Conn.Write(p[n:min(len(p), n+writeChunk)])
		n += m
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.closeOnce.Do(func() {
					c.stalled()
					c.Conn.Close()
				})
			}
			return n, err
		}
	}
	return n, nil
}

// SetDeadline moves the read deadline only; writes keep their own.
func (c *deadlineConn) SetDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }
