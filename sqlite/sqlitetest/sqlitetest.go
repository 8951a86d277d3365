// Package sqlitetest opens a real SQLite store for tests: a sealing key
// and a database file in a directory the test owns, closed at its end.
package sqlitetest

import (
	"path/filepath"
	"testing"

	"github.com/iothub/iothub/seal"
	"github.com/iothub/iothub/sqlite"
)

// Open creates (or reopens) data.key and hub.db in dir and returns the
// store; it is closed when the test ends.
func Open(t testing.TB, dir string) *sqlite.DB {
	t.Helper()
	key, err := seal.LoadOrCreateKey(filepath.Join(dir, "data.key"))
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := seal.New(key)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sqlite.Open(filepath.Join(dir, "hub.db"), sealer)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
