package changes_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/changes"
	"github.com/iothub/iothub/inmem"
	"github.com/iothub/iothub/postgres"
	"github.com/iothub/iothub/postgres/pgtest"
	"github.com/iothub/iothub/seal"
	"github.com/iothub/iothub/sqlite"
)

// recorder collects the events a Bus delivers.
type recorder struct {
	mu sync.Mutex
	ev []iothub.Event
}

func (r *recorder) add(e iothub.Event) { r.mu.Lock(); r.ev = append(r.ev, e); r.mu.Unlock() }

func (r *recorder) events() []iothub.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]iothub.Event(nil), r.ev...)
}

// waitFor waits until r holds n events, or fails after d.
func (r *recorder) waitFor(t *testing.T, n int, d time.Duration) []iothub.Event {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if ev := r.events(); len(ev) >= n {
			return ev
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%d events after %v, want %d: %+v", len(r.events()), d, n, r.events())
	return nil
}

// newSealer makes a sealer with a fresh key.
func newSealer(t *testing.T) *seal.Sealer {
	key, err := seal.LoadOrCreateKey(filepath.Join(t.TempDir(), "data.key"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := seal.New(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func openStore(t *testing.T) *sqlite.DB {
	db, err := sqlite.Open(filepath.Join(t.TempDir(), "iothub.db"), newSealer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// node is a Bus on its own fast path: two nodes share the store but no bus,
// as two hub nodes do while NATS is down.
func node(t *testing.T, db iothub.ChangeLog, every time.Duration) (*changes.Bus, *recorder) {
	b, err := changes.New(inmem.NewBus(), db, changes.Options{Every: every})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	r := &recorder{}
	b.Subscribe(r.add)
	return b, r
}

func TestNodesWithoutBusCatchUpFromTheLog(t *testing.T) {
	db := openStore(t)
	ctx := context.Background()
	// Logged before the nodes start: their state read at start holds it.
	if _, err := db.AppendChange(ctx, iothub.Event{Kind: iothub.EventDeviceChanged, DeviceKey: "old"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	a, ra := node(t, db, 20*time.Millisecond)
	_, rb := node(t, db, 20*time.Millisecond)

	revoked := iothub.Event{Kind: iothub.EventCertRevoked, ProductKey: "pk", DeviceKey: "dk", Serial: "0a", Reason: "keyCompromise"}
	if err := a.Publish(ctx, revoked); err != nil {
		t.Fatal(err)
	}
	got := rb.waitFor(t, 1, 2*time.Second)
	if got[0].Serial != "0a" || got[0].Kind != iothub.EventCertRevoked || got[0].Change != 2 {
		t.Fatalf("node B heard %+v", got[0])
	}
	// The publisher heard it once, from its fast path; later reads of the
	// log do not deliver it again, nor the entry from before the start.
	time.Sleep(100 * time.Millisecond)
	if ev := ra.events(); len(ev) != 1 || ev[0].Serial != "0a" {
		t.Fatalf("node A heard %+v", ev)
	}
	if ev := rb.events(); len(ev) != 1 {
		t.Fatalf("node B heard %+v", ev)
	}
	if err := a.Publish(ctx, iothub.Event{}); iothub.ErrorCode(err) != iothub.EINVALID {
		t.Fatalf("event without a kind: %v", err)
	}
}

func TestReconcileReadsAtOnce(t *testing.T) {
	db := openStore(t)
	a, _ := node(t, db, time.Hour)
	b, rb := node(t, db, time.Hour)
	if err := a.Publish(context.Background(), iothub.Event{Kind: iothub.EventDeviceChanged, ProductKey: "pk", DeviceKey: "dk"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if ev := rb.events(); len(ev) != 0 {
		t.Fatalf("node B heard %+v before reading the log", ev)
	}
	b.Reconcile() // what a bus reconnect does
	if got := rb.waitFor(t, 1, 2*time.Second); got[0].DeviceKey != "dk" {
		t.Fatalf("node B heard %+v", got[0])
	}
}

func TestEventHeardOnTheBusIsNotRepeatedFromTheLog(t *testing.T) {
	db := openStore(t)
	fast := inmem.NewBus() // the nodes share a bus that works
	var buses [2]*changes.Bus
	var recs [2]*recorder
	for i := range buses {
		b, err := changes.New(fast, db, changes.Options{Every: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		recs[i] = &recorder{}
		b.Subscribe(recs[i].add)
		buses[i] = b
	}
	for range 3 {
		if err := buses[0].Publish(context.Background(), iothub.Event{Kind: iothub.EventProductChanged, ProductKey: "pk"}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // several log reads
	for i, r := range recs {
		if ev := r.events(); len(ev) != 3 || ev[0].Change != 1 || ev[2].Change != 3 {
			t.Fatalf("node %d heard %+v, want each event once", i, ev)
		}
	}
}

// TestLogWriteRetriedAfterStoreOutage: an event published while the
// database is down still reaches the log, and so a node without the bus,
// once the database is back.
func TestLogWriteRetriedAfterStoreOutage(t *testing.T) {
	pg := pgtest.Serve(t)
	url, err := pg.CreateDatabase()
	if err != nil {
		t.Fatal(err)
	}
	db, err := postgres.Open(url, newSealer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	a, _ := node(t, db, 50*time.Millisecond)
	_, rb := node(t, db, 50*time.Millisecond)

	if err := pg.Halt(); err != nil {
		t.Fatal(err)
	}
	if err := a.Publish(context.Background(), iothub.Event{Kind: iothub.EventCertRevoked, Serial: "0b"}); err == nil {
		t.Fatal("publishing with the database down reported no error")
	}
	if err := pg.Resume(); err != nil {
		t.Fatal(err)
	}
	if got := rb.waitFor(t, 1, 10*time.Second); got[0].Serial != "0b" {
		t.Fatalf("node B heard %+v", got[0])
	}
}
