package sqlite

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/iothub/iothub"
)

func TestOpenMigratesAndSeedsDefaultOrg(t *testing.T) {
	env := newEnv(t)
	db := env.open(t)
	o, err := db.Org(ctx, iothub.DefaultOrgID)
	must(t, err)
	if o.Name != "default" {
		t.Fatalf("default org name %q", o.Name)
	}
	var mode string
	must(t, db.write.QueryRow(`PRAGMA journal_mode`).Scan(&mode))
	var fk, sync int
	must(t, db.write.QueryRow(`PRAGMA foreign_keys`).Scan(&fk))
	must(t, db.write.QueryRow(`PRAGMA synchronous`).Scan(&sync))
	if mode != "wal" || fk != 1 || sync != 1 {
		t.Fatalf("journal_mode=%s foreign_keys=%d synchronous=%d, want wal 1 1(NORMAL)", mode, fk, sync)
	}
	if _, err := db.read.Exec(`DELETE FROM orgs`); err == nil {
		t.Fatal("read pool accepted a write")
	}
	var version int64
	must(t, db.write.QueryRow(`SELECT MAX(version_id) FROM goose_db_version`).Scan(&version))
	if version < 1 {
		t.Fatalf("goose version %d", version)
	}
	must(t, db.Close())

	// Reopening applies nothing twice and keeps one default org.
	db = env.open(t)
	defer db.Close()
	orgs, err := db.Orgs(ctx)
	must(t, err)
	if len(orgs) != 1 || orgs[0].ID != iothub.DefaultOrgID {
		t.Fatalf("orgs after reopen: %+v", orgs)
	}
}

func TestOpenRefusesBadInput(t *testing.T) {
	env := newEnv(t)
	if _, err := Open(env.path, nil); err == nil {
		t.Fatal("Open without a sealer succeeded")
	}
	if _, err := Open("", env.sealer); err == nil {
		t.Fatal("Open with an empty path succeeded")
	}
	if _, err := Open(env.dir+"/missing/dir/x.db", env.sealer); err == nil {
		t.Fatal("Open in a missing directory succeeded")
	}
}

func TestOpenPathWithURICharacters(t *testing.T) {
	env := newEnv(t)
	dir := filepath.Join(env.dir, "data 50% #1?x")
	must(t, os.Mkdir(dir, 0o700))
	path := filepath.Join(dir, "hub.db")
	db, err := Open(path, env.sealer)
	must(t, err)
	mkProduct(t, db, "pk")
	must(t, db.Close())
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Fatalf("database not at %q: %v", path, err)
	}
	db, err = Open(path, env.sealer)
	must(t, err)
	defer db.Close()
	if _, err := db.Product(ctx, "pk"); err != nil {
		t.Fatal(err)
	}
}
