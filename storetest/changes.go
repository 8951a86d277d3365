package storetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/iothub/iothub"
)

// testChangeLog: concurrent writers get the IDs 1…n without gaps or
// repeats, readers page through them in order, and pruning keeps the
// newest entry so IDs never restart.
func testChangeLog(t *testing.T, db iothub.Store) {
	last, err := db.LastChange(ctx)
	must(t, err)
	if last != 0 {
		t.Fatalf("empty log: last change %d", last)
	}
	if list, err := db.ChangesAfter(ctx, 0, 10); err != nil || len(list) != 0 {
		t.Fatalf("empty log: %v, %v", list, err)
	}
	t0 := time.UnixMilli(1_700_000_000_000).UTC()
	const writers, each = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				e := iothub.Event{Kind: iothub.EventDeviceChanged, ProductKey: "pk", DeviceKey: fmt.Sprintf("d%d-%d", w, i), Change: 99}
				if _, err := db.AppendChange(ctx, e, t0); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var all []iothub.Change
	for after := int64(0); ; {
		page, err := db.ChangesAfter(ctx, after, 7)
		must(t, err)
		if len(page) == 0 {
			break
		}
		all = append(all, page...)
		after = page[len(page)-1].ID
	}
	keys := map[string]bool{}
	for i, ch := range all {
		if ch.ID != int64(i+1) || ch.Event.Change != ch.ID || !ch.Time.Equal(t0) || ch.Event.Kind != iothub.EventDeviceChanged {
			t.Fatalf("entry %d: %+v", i, ch)
		}
		keys[ch.Event.DeviceKey] = true
	}
	if len(all) != writers*each || len(keys) != writers*each {
		t.Fatalf("%d entries for %d distinct events, want %d", len(all), len(keys), writers*each)
	}
	last, err = db.LastChange(ctx)
	must(t, err)
	if last != writers*each {
		t.Fatalf("last change %d", last)
	}

	// Everything is old: pruning keeps the newest, and the next ID follows it.
	must(t, db.PruneChanges(ctx, t0.Add(time.Hour)))
	list, err := db.ChangesAfter(ctx, 0, 100)
	must(t, err)
	if len(list) != 1 || list[0].ID != last {
		t.Fatalf("after pruning: %+v", list)
	}
	id, err := db.AppendChange(ctx, iothub.Event{Kind: iothub.EventCertRevoked, Serial: "0a"}, t0.Add(2*time.Hour))
	must(t, err)
	if id != last+1 {
		t.Fatalf("next ID after pruning %d, want %d", id, last+1)
	}
	must(t, db.PruneChanges(ctx, t0.Add(time.Hour)))
	list, err = db.ChangesAfter(ctx, last, 100)
	must(t, err)
	if len(list) != 1 || list[0].Event.Serial != "0a" {
		t.Fatalf("a recent entry was pruned: %+v", list)
	}
}
