// Command iothub-bench is a load generator for iothub and other MQTT
// brokers (Mosquitto): it simulates devices with paho and measures logins,
// publish throughput and latency, idle memory and service calls. Every
// scenario prints one JSON line; `table` compares two runs.
//
//	iothub-bench provision --api URL --key-file DIR/admin.key --out W --secret N --cert M
//	iothub-bench passwd --fleet W/fleet.json > plain && mosquitto_passwd -U plain
//	iothub-bench connect|idle|publish|store|call --fleet W/fleet.json --broker iothub --login enos --tcp ADDR --tls ADDR --mtls ADDR …
//	iothub-bench table --a iothub.jsonl --b mosquitto.jsonl
//	iothub-bench hub --cpuprofile F | --pprof 127.0.0.1:PORT [serve flags]   (the hub in-process, profiled)
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/iothub/iothub/client"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("iothub-bench: ")
	if len(os.Args) < 2 {
		usage()
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "provision":
		err = cmdProvision(args)
	case "passwd":
		err = cmdPasswd(args)
	case "connect", "idle", "publish", "store", "call":
		err = cmdScenario(cmd, args)
	case "table":
		err = cmdTable(args)
	case "hub":
		err = cmdHub(args)
	default:
		usage()
	}
	if err != nil {
		log.Fatal(err)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: iothub-bench provision|passwd|connect|idle|publish|store|call|table|hub [flags] (-h for flags)")
	os.Exit(2)
}

func cmdProvision(args []string) error {
	fs := flag.NewFlagSet("provision", flag.ExitOnError)
	var cfg provisionConfig
	fs.StringVar(&cfg.API, "api", "", "hub API base URL, e.g. http://127.0.0.1:8080")
	fs.StringVar(&cfg.KeyFile, "key-file", "", "file holding an admin API key (DIR/admin.key)")
	fs.StringVar(&cfg.Out, "out", "", "directory for fleet.json, ca.pem and device keys")
	fs.IntVar(&cfg.Secret, "secret", 100, "devices of the secret product")
	fs.IntVar(&cfg.Cert, "cert", 100, "devices of the certificate product (each gets a certificate)")
	fs.IntVar(&cfg.Concurrency, "concurrency", 8, "parallel API calls")
	fs.Parse(args)
	if cfg.API == "" || cfg.KeyFile == "" || cfg.Out == "" {
		return fmt.Errorf("provision: --api, --key-file and --out are required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	t0 := time.Now()
	if err := provision(ctx, cfg); err != nil {
		return err
	}
	log.Printf("provisioned %d secret and %d certificate devices in %s", cfg.Secret, cfg.Cert, time.Since(t0).Round(time.Millisecond))
	return nil
}

func cmdPasswd(args []string) error {
	fs := flag.NewFlagSet("passwd", flag.ExitOnError)
	path := fs.String("fleet", "", "fleet.json written by provision")
	fs.Parse(args)
	f, err := loadFleet(*path)
	if err != nil {
		return err
	}
	return writePasswords(os.Stdout, f)
}

func cmdScenario(name string, args []string) error {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	fleetPath := fs.String("fleet", "", "fleet.json written by provision")
	broker := fs.String("broker", "iothub", "broker name put in the result")
	label := fs.String("label", "", "result label (default: scenario and transport)")
	login := fs.String("login", "enos", "login kind: enos (signed EnOS login) or userpass (user = deviceKey, password = secret)")
	tcp := fs.String("tcp", "", "plain MQTT address host:port")
	tlsAddr := fs.String("tls", "", "MQTT over TLS address (server authentication, secret login)")
	mtls := fs.String("mtls", "", "MQTT over mutual TLS address (default: --tls)")
	transport := fs.String("transport", "tcp", "tcp, tls or mtls")
	n := fs.Int("n", 100, "devices")
	rate := fs.Float64("rate", 0, "logins or messages per second in total (0: as fast as possible)")
	conc := fs.Int("concurrency", 32, "parallel logins (or callers) when not rate-limited")
	dur := fs.Duration("duration", 5*time.Second, "publish or call phase length")
	hold := fs.Duration("hold", 10*time.Second, "idle: how long connections are held before reading memory")
	pid := fs.Int("pid", 0, "idle: broker process id (memory from /proc/PID/status)")
	ready := fs.String("ready", "", "idle: write this file once every device is connected (SIGTERM then ends the hold early)")
	extrapolate := fs.Int("extrapolate", 0, "idle: also state the RSS of this many connections, from the measured slope")
	qos := fs.Int("qos", 0, "publish QoS (0 or 1)")
	size := fs.Int("size", 64, "publish payload bytes (at least 8)")
	window := fs.Int("window", 32, "publish QoS 1 messages in flight per device")
	srcIPs := fs.Int("src-ips", 1, "spread connections over 127.0.0.1…127.0.0.N (past ~28k ports)")
	keepAlive := fs.Duration("keepalive", 60*time.Second, "MQTT keepalive")
	api := fs.String("api", "", "call with --login enos: hub API base URL")
	keyFile := fs.String("key-file", "", "call with --login enos: admin API key file")
	cpuProfile := fs.String("cpuprofile", "", "write the generator's CPU profile here")
	settle := fs.Duration("settle", time.Second, "pause after disconnecting, so the broker is done before the next run")
	fs.Parse(args)
	if *mtls == "" {
		*mtls = *tlsAddr
	}
	switch {
	case *fleetPath == "":
		return fmt.Errorf("%s: --fleet is required (written by provision)", name)
	case *transport != "tcp" && *transport != "tls" && *transport != "mtls":
		return fmt.Errorf("%s: --transport must be tcp, tls or mtls", name)
	case *qos != 0 && *qos != 1:
		return fmt.Errorf("%s: --qos must be 0 or 1", name)
	case *n <= 0 || *conc <= 0 || *rate < 0 || *dur <= 0:
		return fmt.Errorf("%s: --n and --concurrency must be positive, --rate not negative, --duration positive", name)
	}
	f, err := loadFleet(*fleetPath)
	if err != nil {
		return err
	}
	if *cpuProfile != "" {
		pf, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	t := &target{broker: *broker, login: *login, fleet: f, srcIPs: *srcIPs, keepAlive: *keepAlive, settle: *settle,
		addrs: map[string]string{"tcp": *tcp, "tls": *tlsAddr, "mtls": *mtls}}
	r := &Result{Broker: *broker, Scenario: name, Label: *label}
	if r.Label == "" {
		r.Label = name + " " + *transport
	}
	switch name {
	case "connect":
		err = t.runConnect(r, *transport, *n, *rate, *conc)
	case "idle":
		if *pid <= 0 {
			return fmt.Errorf("idle: --pid is required")
		}
		err = t.runIdle(r, *transport, *n, *rate, *conc, idleConfig{hold: *hold, pid: *pid, ready: *ready, extrapolate: *extrapolate})
	case "publish":
		err = t.runPublish(r, *transport, *n, *qos, *rate, *dur, *size, *window)
	case "store":
		err = t.runStore(r, *transport, *n, *rate, *dur, *window)
	case "call":
		var cl caller
		if *login == "enos" {
			key, kerr := os.ReadFile(*keyFile)
			if kerr != nil {
				return kerr
			}
			c, cerr := client.New(*api, strings.TrimSpace(string(key)), nil)
			if cerr != nil {
				return cerr
			}
			cl = apiCaller{c}
		} else {
			mc, merr := newMQTTCaller(t)
			if merr != nil {
				return merr
			}
			defer mc.c.Disconnect(20)
			cl = mc
		}
		err = t.runCall(r, *n, *conc, *dur, cl)
	}
	if err != nil {
		r.Notes = map[string]string{"error": err.Error()}
		log.Printf("%s %s: %v", *broker, r.Label, err)
	}
	return r.write(os.Stdout)
}

func cmdTable(args []string) error {
	fs := flag.NewFlagSet("table", flag.ExitOnError)
	a := fs.String("a", "", "results of the first broker (JSON lines)")
	b := fs.String("b", "", "results of the second broker (JSON lines)")
	an := fs.String("a-name", "iothub", "first broker's name")
	bn := fs.String("b-name", "mosquitto", "second broker's name")
	fs.Parse(args)
	ra, err := readResults(*a)
	if err != nil {
		return err
	}
	rb, err := readResults(*b)
	if err != nil {
		return err
	}
	table(os.Stdout, *an, *bn, ra, rb)
	return nil
}

// cmdHub runs the hub in this process, with a CPU profile and/or a
// loopback profiling endpoint, so that a benchmark run can be profiled
// without a profiling endpoint in `iothub serve`.
func cmdHub(args []string) error {
	fs := flag.NewFlagSet("hub", flag.ExitOnError)
	cfg := hubFlags(fs)
	cpuProfile := fs.String("cpuprofile", "", "write the hub's CPU profile here")
	memProfile := fs.String("memprofile", "", "on SIGUSR1, write a heap profile here and memory figures to stderr")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on this loopback address (127.0.0.1:PORT)")
	memRate := fs.Int("memprofilerate", runtime.MemProfileRate, "sample one allocation per this many bytes in heap and allocs profiles (1: every allocation)")
	fs.Parse(args)
	if *memRate <= 0 {
		return fmt.Errorf("hub: --memprofilerate must be positive")
	}
	runtime.MemProfileRate = *memRate
	if *cpuProfile == "" && *pprofAddr == "" {
		return fmt.Errorf("hub: --cpuprofile or --pprof is required (otherwise run iothub serve)")
	}
	if *pprofAddr != "" {
		srv, _, err := servePprof(*pprofAddr)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	h, err := openHub(cfg())
	if err != nil {
		return err
	}
	if *cpuProfile != "" {
		pf, err := os.Create(*cpuProfile)
		if err != nil {
			h.Close()
			return err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			h.Close()
			return err
		}
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	usr := make(chan os.Signal, 1)
	signal.Notify(usr, syscall.SIGUSR1)
	for {
		select {
		case <-usr:
			if err := memReport(*memProfile); err != nil {
				log.Printf("memory report: %v", err)
			}
		case <-stop:
			pprof.StopCPUProfile() // a no-op without --cpuprofile
			return h.Close()
		}
	}
}

// memReport logs the Go runtime's memory figures and, when path is set,
// writes a heap profile there.
func memReport(path string) error {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	log.Printf("memory: goroutines %d, stacks in use %d KiB, heap in use %d KiB, heap live %d KiB, heap idle %d KiB, released %d KiB, sys %d KiB",
		runtime.NumGoroutine(), m.StackInuse>>10, m.HeapInuse>>10, m.HeapAlloc>>10, m.HeapIdle>>10, m.HeapReleased>>10, m.Sys>>10)
	if path == "" {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.WriteHeapProfile(f)
}
