package sqlstore

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
	"time"

	"github.com/iothub/iothub/seal"
)

// Config is what a store supplies to its Core.
type Config struct {
	// Name prefixes unexpected errors ("sqlite", "postgres").
	Name string
	// Read serves queries; Write serves writes and transactions. They may
	// be the same pool.
	Read, Write *sql.DB
	Sealer      *seal.Sealer
	Now         func() time.Time
	// Constraint classifies a constraint violation: "unique" (also primary
	// key), "foreign" or "" for anything else, with a detail that names the
	// table and column(s).
	Constraint func(error) (kind, detail string)
	// LockKey, if set, runs first in the transaction that binds a
	// certificate's public key, to keep other writers from binding the
	// same key meanwhile.
	LockKey func(ctx context.Context, tx *sql.Tx, publicKeySHA256 string) error
	// DeviceExists fails with ENOTFOUND if the device is absent; tx is a
	// write transaction, in which the store may lock the device's row.
	DeviceExists func(ctx context.Context, tx *sql.Tx, productKey, deviceKey string) error
	// Numbered turns the statements' ? placeholders into $1, $2, ….
	Numbered bool
	// ForUpdate is appended to a read that a transaction then writes
	// upon: " FOR UPDATE" where other writers run at once, "" where writes
	// are serialized already.
	ForUpdate string
}

// Core implements the iothub.Store methods whose statements are the same
// in both stores apart from placeholders and row locks. A store embeds it
// and supplies its pools, its sealer and clock and a classifier of its
// driver's constraint violations; hot paths and statements that differ
// stay in the store.
// Its configuration stays in an unexported field, so a store embedding
// *Core promotes only the store methods.
type Core struct{ cfg Config }

// New returns the Core of a store.
func New(cfg Config) *Core { return &Core{cfg: cfg} }

// q adapts a statement written with ? placeholders to the driver.
func (c *Core) q(s string) string {
	if !c.cfg.Numbered {
		return s
	}
	return Numbered(s)
}

// Numbered replaces each ? in s with $1, $2, … in order. The statements it
// serves hold no ? inside literals.
func Numbered(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 16)
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] != '?' {
			b.WriteByte(s[i])
			continue
		}
		n++
		b.WriteByte('$')
		b.WriteString(strconv.Itoa(n))
	}
	return b.String()
}

func (c *Core) wrap(op string, err error) error { return Wrap(c.cfg.Name, op, err) }

func (c *Core) tx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	return Tx(ctx, c.cfg.Write, c.cfg.Name, fn)
}

func (c *Core) truncMS(t time.Time) time.Time { return TruncMS(t, c.cfg.Now) }
