//go:build linux

package mqtt

import (
	"errors"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// poller tells the hub which connections have input, so that an idle
// connection costs no goroutine: one goroutine waits on epoll for every
// connection of the process and starts a reader for a connection only
// when bytes arrive. Each connection is armed one-shot and re-armed by its
// reader when it has read everything, so at most one reader runs per
// connection. The epoll descriptor is itself waited on through Go's
// network poller (an epoll set is readable while it has events), so the
// waiting goroutine is woken by the scheduler like any network goroutine,
// without an OS thread parked in epoll_wait and the hand-offs that costs.
type poller struct {
	epfd int
	ep   syscall.RawConn // epfd, as Go's poller sees it

	mu    sync.Mutex
	conns []*conn  // by slot
	gens  []uint32 // generation of each slot, bumped when it is freed
	free  []uint32 // free slots
}

// thePoller is shared by every Server of the process.
var thePoller = sync.OnceValues(func() (*poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, err
	}
	ep, err := os.NewFile(uintptr(fd), "epoll").SyscallConn()
	if err != nil {
		return nil, err
	}
	p := &poller{epfd: fd, ep: ep}
	go p.run()
	return p, nil
})

// readEvents is what a connection is armed for: input, or the peer
// closing its side, once.
const readEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

// add registers c, armed for its first input or, when armed is false,
// waiting for its reader to arm it.
func (p *poller) add(c *conn, armed bool) error {
	p.mu.Lock()
	var slot uint32
	if n := len(p.free); n > 0 {
		slot = p.free[n-1]
		p.free = p.free[:n-1]
	} else {
		slot = uint32(len(p.conns))
		p.conns = append(p.conns, nil)
		p.gens = append(p.gens, 0)
	}
	p.conns[slot] = c
	c.slot, c.gen = slot, p.gens[slot]
	p.mu.Unlock()
	events := uint32(readEvents)
	if !armed {
		events = unix.EPOLLONESHOT
	}
	return p.ctl(unix.EPOLL_CTL_ADD, c, events)
}

// rearm asks for c's next input.
func (p *poller) rearm(c *conn) error { return p.ctl(unix.EPOLL_CTL_MOD, c, readEvents) }

// remove forgets c; call it before closing its socket. An event already
// taken for c is then ignored: its slot's generation no longer matches.
func (p *poller) remove(c *conn) {
	_ = p.ctl(unix.EPOLL_CTL_DEL, c, 0)
	p.mu.Lock()
	if p.conns[c.slot] == c {
		p.conns[c.slot] = nil
		p.gens[c.slot]++
		p.free = append(p.free, c.slot)
	}
	p.mu.Unlock()
}

func (p *poller) ctl(op int, c *conn, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(c.slot), Pad: int32(c.gen)}
	var err error
	cerr := c.raw.Control(func(fd uintptr) { err = unix.EpollCtl(p.epfd, op, int(fd), &ev) })
	return errors.Join(cerr, err)
}

// run dispatches input to the connections' readers, forever.
func (p *poller) run() {
	events := make([]unix.EpollEvent, 256)
	for {
		var n int
		_ = p.ep.Read(func(fd uintptr) bool {
			var err error
			n, err = unix.EpollWait(int(fd), events, 0)
			return n > 0 || (err != nil && err != unix.EINTR && err != unix.EAGAIN)
		})
		for _, ev := range events[:n] {
			p.mu.Lock()
			var c *conn
			if slot := uint32(ev.Fd); int(slot) < len(p.conns) && p.gens[slot] == uint32(ev.Pad) {
				c = p.conns[slot]
			}
			p.mu.Unlock()
			if c != nil {
				dispatch(c)
			}
		}
	}
}
