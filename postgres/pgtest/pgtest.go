// Package pgtest starts a throwaway PostgreSQL cluster for tests: initdb
// into a temporary directory, a server on 127.0.0.1 with a free port and
// its unix socket inside that directory, and a fresh database per test.
//
// A test binary calls Run from its TestMain; tests call URL. A test in a
// package without such a TestMain calls Standalone. When the
// PostgreSQL binaries are missing, URL skips the test, unless the
// environment variable CI is set: then it fails, since CI installs them
// (Debian package postgresql).
//
// PostgreSQL refuses to run as root, so as root the cluster runs as the
// postgres user (runuser), in a directory that user owns.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
)

// Cluster is a running throwaway PostgreSQL server.
type Cluster struct {
	dir   string // owned by the server's user; removed by Stop
	bin   string
	port  int
	runAs string   // "" or the user to run the binaries as
	start []string // pg_ctl arguments that start the server
	admin *sql.DB
}

var (
	shared   *Cluster
	startErr error
)

// Run starts a cluster, runs the tests, stops the cluster and returns the
// exit code for os.Exit. A cluster that cannot start leaves URL to skip or
// fail each test that needs it.
func Run(m *testing.M) int {
	shared, startErr = Start(Options{})
	code := m.Run()
	if shared != nil {
		shared.Stop()
	}
	return code
}

// URL returns the URL of a new, empty database on the cluster Run
// started. It skips the test if PostgreSQL is not installed and CI is
// unset, and fails it otherwise.
func URL(tb testing.TB) string {
	tb.Helper()
	if shared == nil {
		if errors.Is(startErr, ErrNotInstalled) && os.Getenv("CI") == "" {
			tb.Skipf("pgtest: %v", startErr)
		}
		tb.Fatalf("pgtest: %v", startErr)
	}
	url, err := shared.CreateDatabase()
	if err != nil {
		tb.Fatal(err)
	}
	return url
}

// Standalone starts a cluster of its own, stopped at the end of the test,
// and returns the URL of a database on it; for packages without a TestMain
// of their own. It skips or fails as URL does.
func Standalone(tb testing.TB) string {
	tb.Helper()
	url, err := Serve(tb).CreateDatabase()
	if err != nil {
		tb.Fatal(err)
	}
	return url
}

// Serve starts a cluster of its own, stopped at the end of the test, for
// tests that halt and restart the server. It skips or fails as URL does.
func Serve(tb testing.TB) *Cluster {
	tb.Helper()
	c, err := Start(Options{})
	if err != nil {
		if errors.Is(err, ErrNotInstalled) && os.Getenv("CI") == "" {
			tb.Skipf("pgtest: %v", err)
		}
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(c.Stop)
	return c
}

// Halt stops the server, keeping its data: it ends every connection and
// shuts down cleanly (pg_ctl -m fast), as an operator's restart does. A
// crash would lose the last commits here: tests run without fsync.
func (c *Cluster) Halt() error {
	if out, err := c.run("pg_ctl", "-D", filepath.Join(c.dir, "data"), "-m", "fast", "-w", "stop"); err != nil {
		return fmt.Errorf("pgtest: pg_ctl stop: %v: %s", err, out)
	}
	return nil
}

// Resume starts a halted server again on its port.
func (c *Cluster) Resume() error {
	if out, err := c.run("pg_ctl", c.start...); err != nil {
		return fmt.Errorf("pgtest: pg_ctl start: %v: %s", err, out)
	}
	return nil
}

// ErrNotInstalled reports that no PostgreSQL server binaries were found.
var ErrNotInstalled = errors.New("PostgreSQL server binaries (initdb, pg_ctl) not found; install the Debian package postgresql")

// binDir finds the directory holding initdb and pg_ctl: PATH first, then
// Debian's /usr/lib/postgresql/<version>/bin, newest version first.
func binDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if _, err := exec.LookPath("pg_ctl"); err == nil {
			return filepath.Dir(p), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", ErrNotInstalled
}

// Options tune a cluster.
type Options struct {
	// Durable keeps fsync and synchronous_commit on, as in production
	// (benchmarks); tests leave it off for speed.
	Durable bool
}

// Start initialises and starts a cluster with trust authentication on
// 127.0.0.1 only and the C locale (byte-wise key order, as in SQLite).
// Unless o.Durable, fsync and synchronous_commit are off: it is for tests.
func Start(o Options) (*Cluster, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	c := &Cluster{bin: bin}
	c.dir, err = os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(c.dir)
			return nil, fmt.Errorf("pgtest: running as root needs a postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(c.dir, uid, gid); err != nil {
			os.RemoveAll(c.dir)
			return nil, err
		}
		c.runAs = "postgres"
	}
	data := filepath.Join(c.dir, "data")
	if out, err := c.run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-locale",
		"-E", "UTF8", "--no-sync"); err != nil {
		os.RemoveAll(c.dir)
		return nil, fmt.Errorf("pgtest: initdb: %v: %s", err, out)
	}
	// The port is free when we look; another process could take it before
	// the server binds, so a failed start is retried on a new port.
	for attempt := 0; ; attempt++ {
		c.port, err = freePort()
		if err != nil {
			os.RemoveAll(c.dir)
			return nil, err
		}
		opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=128MB",
			c.port, c.dir)
		if !o.Durable {
			opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
		}
		c.start = []string{"-D", data, "-l", filepath.Join(c.dir, "log"), "-o", opts, "-w", "-t", "60", "start"}
		out, err := c.run("pg_ctl", c.start...)
		if err == nil {
			break
		}
		if attempt == 2 {
			log, _ := os.ReadFile(filepath.Join(c.dir, "log"))
			os.RemoveAll(c.dir)
			return nil, fmt.Errorf("pgtest: pg_ctl start: %v: %s\n%s", err, out, log)
		}
	}
	c.admin, err = sql.Open("pgx", c.url("postgres"))
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err = c.admin.PingContext(ctx)
		cancel()
	}
	if err != nil {
		c.Stop()
		return nil, fmt.Errorf("pgtest: connect: %w", err)
	}
	return c, nil
}

// run runs one of the cluster's binaries, as the postgres user if needed.
func (c *Cluster) run(name string, args ...string) ([]byte, error) {
	path := filepath.Join(c.bin, name)
	var cmd *exec.Cmd
	if c.runAs != "" {
		cmd = exec.Command("runuser", append([]string{"-u", c.runAs, "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = c.dir
	return cmd.CombinedOutput()
}

func (c *Cluster) url(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, db)
}

// Port is the server's TCP port on 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// CreateDatabase creates a database with a random name and returns its URL.
func (c *Cluster) CreateDatabase() (string, error) {
	b := make([]byte, 8)
	rand.Read(b)
	name := "t" + hex.EncodeToString(b)
	if _, err := c.admin.Exec(`CREATE DATABASE ` + name); err != nil {
		return "", fmt.Errorf("pgtest: create database: %w", err)
	}
	return c.url(name), nil
}

// CrashRestart stops the server at once (immediate mode: no checkpoint,
// as in a crash) and starts it again on the same port and data, so that
// clients see their connections dropped and then accepted again.
func (c *Cluster) CrashRestart() error {
	// With -l the new server's output goes to the log, not to a pipe that
	// run would wait on for as long as the server lives.
	out, err := c.run("pg_ctl", "-D", filepath.Join(c.dir, "data"), "-l", filepath.Join(c.dir, "log"),
		"-m", "immediate", "-w", "-t", "60", "restart")
	if err != nil {
		return fmt.Errorf("pgtest: pg_ctl restart: %v: %s", err, out)
	}
	return nil
}

// Stop stops the server at once and removes its directory.
func (c *Cluster) Stop() {
	if c.admin != nil {
		c.admin.Close()
	}
	c.run("pg_ctl", "-D", filepath.Join(c.dir, "data"), "-m", "immediate", "-w", "stop")
	os.RemoveAll(c.dir)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
