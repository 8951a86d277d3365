package edge

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// BuildDate is the date the agent was built (RFC 3339 date or time), set
// at link time with
//
//	-ldflags "-X github.com/iothub/iothub/edge.BuildDate=$(date -u +%Y-%m-%d)"
//
// A clock earlier than it is known to be wrong.
var BuildDate = "2026-11-01"

// ErrClock is wrapped by the clock guard's refusals.
var ErrClock = errors.New("edge: the system clock is wrong")

// CheckClock refuses a clock that reads earlier than the build date or than
// the NotBefore of any certificate in the pinned CA bundle: such a clock was
// reset or tampered with, and certificate validity checks made with it mean
// nothing.
func CheckClock(now time.Time, caPEM []byte) error {
	if bd, err := parseBuildDate(BuildDate); err == nil && now.Before(bd) {
		return fmt.Errorf("%w: it reads %s, before this agent's build date %s; set the time (NTP) and start again",
			ErrClock, now.UTC().Format(time.RFC3339), bd.Format(time.RFC3339))
	}
	for rest := caPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return fmt.Errorf("edge: pinned CA file: %w", err)
		}
		if now.Before(c.NotBefore) {
			return fmt.Errorf("%w: it reads %s, before the pinned CA %q is valid (%s); set the time (NTP) and start again",
				ErrClock, now.UTC().Format(time.RFC3339), c.Subject.CommonName, c.NotBefore.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

func parseBuildDate(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Parse("2006-01-02", s)
}
