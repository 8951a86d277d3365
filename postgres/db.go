// Package postgres is the hub's shared store for running several nodes: it
// implements iothub.Store on PostgreSQL through pgx (database/sql with the
// pgx/stdlib driver), with the same schema and migrations as the sqlite
// store (the migrations package) and the same behaviour, error codes and
// sealed secrets.
//
// Several hub nodes write to one database at once, so the places where
// the sqlite store relies on its single writer take row or advisory locks
// here: revocations and verifications lock the row they check, a new
// certificate locks its public key, telemetry appends lock the device row,
// and audit ids are allotted under a transaction-scoped advisory lock.
//
// Listings order keys with the database's collation; a database created
// with LC_COLLATE "C" orders them byte-wise, exactly as SQLite does.
package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/internal/sqlstore"
	"github.com/iothub/iothub/migrations"
	"github.com/iothub/iothub/seal"
)

var _ iothub.Store = (*DB)(nil)

// MaxConns caps the connections one DB holds to the server.
const MaxConns = 16

// core is an alias so the embedded field stays unexported.
type core = sqlstore.Core

// DB is the PostgreSQL store. It is safe for concurrent use, also by
// several processes on one database.
type DB struct {
	*core // orgs, api keys, products, certificates, device listing and removal, telemetry reads, attributes, audit listing: the statements both stores share

	db     *sql.DB
	sealer *seal.Sealer
	now    func() time.Time
}

// Open connects to the database at url (postgres://user:pass@host:port/db?…
// or a key=value DSN), applies pending migrations under a session advisory
// lock (nodes starting together migrate once) and makes sure the default org
// exists. Secrets are sealed and opened with s, which every node of a
// cluster must share.
func Open(url string, s *seal.Sealer) (*DB, error) {
	if s == nil {
		return nil, errors.New("postgres: a sealer is required")
	}
	if url == "" {
		return nil, errors.New("postgres: empty database url")
	}
	sqldb, err := sql.Open("pgx", url)
	if err != nil {
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	sqldb.SetMaxOpenConns(MaxConns)
	sqldb.SetMaxIdleConns(MaxConns)
	sqldb.SetConnMaxIdleTime(5 * time.Minute)
	db := &DB{db: sqldb, sealer: s, now: time.Now}
	db.core = sqlstore.New(sqlstore.Config{Name: "postgres", Read: sqldb, Write: sqldb, Sealer: s, Now: db.now,
		Constraint: constraint, Numbered: true, ForUpdate: " FOR UPDATE", LockKey: lockKey, DeviceExists: db.deviceExists})
	if err := db.init(); err != nil {
		sqldb.Close()
		return nil, err
	}
	return db, nil
}

func (db *DB) init() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := db.db.PingContext(ctx); err != nil {
		return fmt.Errorf("postgres: connect: %w", err)
	}
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return fmt.Errorf("postgres: migrations: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db.db, migrations.FS,
		goose.WithDisableGlobalRegistry(true), goose.WithSessionLocker(locker))
	if err != nil {
		return fmt.Errorf("postgres: migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	_, err = db.db.ExecContext(ctx,
		`INSERT INTO orgs (id, name, created_at) VALUES ($1, 'default', $2) ON CONFLICT (id) DO NOTHING`,
		iothub.DefaultOrgID, sqlstore.MS(db.now()))
	if err != nil {
		return fmt.Errorf("postgres: default org: %w", err)
	}
	return nil
}

// Close closes the connection pool. The DB must not be used afterwards.
func (db *DB) Close() error {
	if err := db.db.Close(); err != nil {
		return fmt.Errorf("postgres: close: %w", err)
	}
	return nil
}

// tx runs fn in a read-committed transaction, committing if fn returns nil.
func (db *DB) tx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	return sqlstore.Tx(ctx, db.db, "postgres", fn)
}

// Advisory lock keys (first argument of pg_advisory_xact_lock(int, int)).
const (
	lockAudit     = 0x10711 // audit id allotment
	lockPublicKey = 0x10712 // binding of one public key hash
)

// lockKey serializes the binding of one public key across nodes until
// the transaction ends.
func lockKey(ctx context.Context, tx *sql.Tx, publicKeySHA256 string) error {
	_, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, lockPublicKey, publicKeySHA256)
	return err
}

// constraint classifies a constraint violation: "unique" (also primary
// key), "foreign" or "" for anything else. detail is the violated
// constraint's name, which names the table and column(s).
func constraint(err error) (kind, detail string) {
	var e *pgconn.PgError
	if !errors.As(err, &e) {
		return "", ""
	}
	switch e.Code {
	case "23505":
		return "unique", e.ConstraintName
	case "23503":
		return "foreign", e.ConstraintName
	}
	return "", ""
}

// wrap turns an unexpected driver error into an internal error naming op.
func wrap(op string, err error) error { return sqlstore.Wrap("postgres", op, err) }

// truncMS returns t cut to millisecond precision in UTC, or the store's
// clock if t is zero.
func (db *DB) truncMS(t time.Time) time.Time { return sqlstore.TruncMS(t, db.now) }
