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
	bin  string
	port int
	cmd  *exec.Cmd
	done chan struct{}
}

// URL starts a nats-server stopped at the end of the test and returns its
// URL, nats://127.0.0.1:port.
func URL(tb testing.TB) string {
	tb.Helper()
	return Serve(tb).URL
}

// Serve starts a nats-server stopped at the end of the test, for tests
// that stop and restart it.
func Serve(tb testing.TB) *Server {
	tb.Helper()
	s, err := Start()
	if err != nil {
		if _, lookErr := exec.LookPath("nats-server"); lookErr != nil && os.Getenv("CI") == "" {
			tb.Skipf("natstest: nats-server not installed (Debian package nats-server): %v", err)
		}
		tb.Fatalf("natstest: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
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
		s := &Server{URL: fmt.Sprintf("nats://127.0.0.1:%d", port), bin: bin, port: port}
		if lastErr = s.run(); lastErr == nil {
			return s, nil
		}
	}
	return nil, lastErr
}

// Restart starts a stopped server again on its port.
func (s *Server) Restart() error {
	var err error
	for range 50 { // the old socket may linger for a moment
		if err = s.run(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// run starts the process and waits until it accepts clients.
func (s *Server) run() error {
	var log bytes.Buffer
	s.done = make(chan struct{})
	s.cmd = exec.Command(s.bin, "-a", "127.0.0.1", "-p", fmt.Sprint(s.port))
	s.cmd.Stderr = &log
	if err := s.cmd.Start(); err != nil {
		return err
	}
	cmd, done := s.cmd, s.done
	go func() { cmd.Wait(); close(done) }()
	if err := s.waitReady(s.port); err != nil {
		s.Stop()
		return fmt.Errorf("nats-server did not start: %s", log.String())
	}
	return nil
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

// Stop kills the server and waits for it to exit; a stopped server stays so.
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
