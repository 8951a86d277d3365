//go:build darwin || freebsd || netbsd || openbsd

package mqtt

import (
	"sync"
	"syscall"
)

// poller, where there is no epoll, waits for each connection's input on a
// goroutine of its own through Go's network poller: the same contract as
// on Linux, without the memory saving.
type poller struct{}

var thePoller = sync.OnceValues(func() (*poller, error) { return &poller{}, nil })

func (p *poller) add(c *conn, armed bool) error {
	if armed {
		go p.wait(c)
	}
	return nil
}

func (p *poller) rearm(c *conn) error {
	go p.wait(c)
	return nil
}

// remove needs nothing: closing the socket ends the wait.
func (p *poller) remove(*conn) {}

// wait returns once c has input (peeked, not taken) and runs its reader.
func (p *poller) wait(c *conn) {
	var one [1]byte
	err := c.raw.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), one[:], syscall.MSG_PEEK)
		return err != syscall.EAGAIN
	})
	if err == nil {
		c.readable()
	}
}
