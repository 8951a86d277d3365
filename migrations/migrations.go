// Package migrations holds the registry schema shared by the sqlite and
// postgres stores: one set of goose migrations in SQL both databases
// accept. Each store runs them with its own goose dialect.
package migrations

import "embed"

// FS holds the migrations (*.sql) at its root.
//
//go:embed *.sql
var FS embed.FS
