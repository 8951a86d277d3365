// Package natstest starts a throwaway nats-server for tests, on 127.0.0.1
// with a free port.
//
// URL skips the test when nats-server is not installed, unless the
// environment variable CI is set: then it fails, since CI installs it
// (Debian package nats-server).
package natstest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

// Server is a running nats-server.
type Server struct {
	URL  string
	cmd  *exec.Cmd
	done chan struct{}
}

// URL starts a nats-server stopped at the end of the test and returns its
// URL, nats://127.0.0.1:port.
func URL(tb testing.TB) string {
	tb.Helper()
	s, err := Start()
	if err != nil {
		if _, lookErr := exec.LookPath("nats-server"); lookErr != nil && os.Getenv("CI") == "" {
			tb.Skipf("natstest: nats-server not installed (Debian package nats-server): %v", err)
		}
		tb.Fatalf("natstest: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s.URL
}

// Start runs nats-server on a free port of 127.0.0.1 and waits until it
// accepts clients.
func Start() (*Server, error) {
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 3 { // the free port can be taken before the server binds it
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &Server{URL: fmt.Sprintf("nats://127.0.0.1:%d", port), done: make(chan struct{})}
		var log bytes.Buffer
		s.cmd = exec.Command(bin, "-a", "127.0.0.1", "-p", fmt.Sprint(port))
		s.cmd.Stderr = &log
		if err := s.cmd.Start(); err != nil {
			return nil, err
		}
		go func() { s.cmd.Wait(); close(s.done) }()
		if err := s.waitReady(port); err == nil {
			return s, nil
		}
		s.Stop()
		lastErr = fmt.Errorf("nats-server did not start: %s", log.String())
	}
	return nil, lastErr
}

// waitReady polls until the server accepts TCP connections, exits, or 10 s pass.
func (s *Server) waitReady(port int) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("exited")
		default:
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("not ready")
}

// Stop kills the server and waits for it to exit.
func (s *Server) Stop() {
	s.cmd.Process.Kill()
	<-s.done
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
