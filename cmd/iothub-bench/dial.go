package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iothub/iothub/sign"
)

// target says how to reach a broker and log in to it.
type target struct {
	broker    string            // "iothub" or "mosquitto": the name in the results
	addrs     map[string]string // transport ("tcp", "tls", "mtls") → host:port
	login     string            // "enos" or "userpass"
	fleet     *fleet
	srcIPs    int // spread outgoing connections over 127.0.0.1 … 127.0.0.N
	keepAlive time.Duration
	settle    time.Duration // pause after a scenario's disconnects
}

// options returns the paho options of the i-th connection of device d.
func (t *target) options(transport string, i int, d *device) (*paho.ClientOptions, error) {
	addr := t.addrs[transport]
	if addr == "" {
		return nil, fmt.Errorf("no address for %s", transport)
	}
	o := paho.NewClientOptions()
	o.SetProtocolVersion(4) // paho would silently retry with 3.1
	o.SetAutoReconnect(false)
	o.SetConnectRetry(false)
	o.SetCleanSession(true)
	o.SetKeepAlive(t.keepAlive)
	o.SetPingTimeout(10 * time.Second)
	o.SetConnectTimeout(15 * time.Second)
	o.SetWriteTimeout(15 * time.Second)
	if t.srcIPs > 1 {
		o.SetDialer(&net.Dialer{Timeout: 15 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i%t.srcIPs))}})
	}
	scheme := "tcp://"
	if transport != "tcp" {
		scheme = "ssl://"
		host, _, _ := net.SplitHostPort(addr)
		tc := &tls.Config{
			RootCAs:    t.fleet.caPool,
			ServerName: host,
			MinVersion: tls.VersionTLS12,
			// What OpenSSL and the EnOS SDKs offer: no post-quantum hybrid,
			// which Mosquitto's OpenSSL lacks and Go would pick against Go.
			CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256},
		}
		if transport == "mtls" {
			c, err := d.tlsCert()
			if err != nil {
				return nil, err
			}
			tc.Certificates = []tls.Certificate{c}
		}
		o.SetTLSConfig(tc)
	}
	o.AddBroker(scheme + addr)
	switch t.login {
	case "enos":
		ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
		cid, user, pass, err := sign.Credentials(d.DK, d.PK, d.DK, d.Secret, sign.ModeStatic, sign.SHA256, ts)
		if err != nil {
			return nil, err
		}
		o.SetClientID(cid).SetUsername(user).SetPassword(pass)
	case "userpass":
		// With mutual TLS Mosquitto takes the certificate's CN as user
		// name and ignores these.
		o.SetClientID(d.DK).SetUsername(d.DK).SetPassword(d.Secret)
	default:
		return nil, fmt.Errorf("unknown login %q (enos or userpass)", t.login)
	}
	return o, nil
}

// connectWith dials and logs in; it returns the client and the time from
// the start of the dial to the CONNACK.
func connectWith(o *paho.ClientOptions) (paho.Client, time.Duration, error) {
	c := paho.NewClient(o)
	t0 := time.Now()
	tok := c.Connect()
	if !tok.WaitTimeout(20 * time.Second) {
		c.Disconnect(0)
		return nil, 0, fmt.Errorf("connect: timeout")
	}
	if err := tok.Error(); err != nil {
		return nil, 0, err
	}
	return c, time.Since(t0), nil
}

// readRSS returns the resident memory of process pid in bytes.
func readRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) != 2 || f[1] != "kB" {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
