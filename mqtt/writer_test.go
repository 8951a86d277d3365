package mqtt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// A batch that fails is split until only the write the store refuses
// fails: its neighbours in the same group commit are stored.
func TestGroupWriterIsolatesTheWriteTheStoreRefuses(t *testing.T) {
	var mu sync.Mutex
	stored := map[int]bool{}
	started, release := make(chan struct{}), make(chan struct{})
	var hold sync.Once
	commit := func(_ context.Context, items []int) error {
		// Hold the first commit so that the other writes queue into one group.
		hold.Do(func() { close(started); <-release })
		for _, it := range items {
			if it < 0 {
				return errors.New("poisoned")
			}
		}
		mu.Lock()
		defer mu.Unlock()
		for _, it := range items {
			stored[it] = true
		}
		return nil
	}
	var refused atomic.Int64
	w := newGroupWriter(commit, 1000, func(items int, _ error) { refused.Add(int64(items)) })
	defer w.Close()

	results := make([]error, 41)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); results[0] = writeSync(w, []int{1000}) }()
	<-started
	for i := 1; i <= 40; i++ {
		item := i
		if i == 17 {
			item = -17
		}
		wg.Add(1)
		go func() { defer wg.Done(); results[i] = writeSync(w, []int{item}) }()
	}
	for len(w.in) < 40 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	for i, err := range results {
		switch {
		case i == 17 && err == nil:
			t.Fatal("the poisoned write was acknowledged")
		case i != 17 && err != nil:
			t.Fatalf("write %d refused with its poisoned neighbour: %v", i, err)
		}
	}
	if len(stored) != 40 || stored[-17] {
		t.Fatalf("stored %d items (want 40, poison excluded)", len(stored))
	}
	if refused.Load() != 1 {
		t.Fatalf("%d items counted as refused, want 1", refused.Load())
	}
}

// A store that is down refuses every write within the split budget, and
// writes go through again once it is back; nothing is acknowledged that
// was not committed.
func TestGroupWriterRefusesWhileTheStoreIsDownAndResumes(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	var stored atomic.Int64
	commit := func(_ context.Context, items []int) error {
		if down.Load() {
			return errors.New("database is down")
		}
		stored.Add(int64(len(items)))
		return nil
	}
	w := newGroupWriter(commit, 100, func(int, error) {})
	if err := writeSync(w, []int{1, 2}); err == nil {
		t.Fatal("a write was acknowledged while the store was down")
	}
	down.Store(false)
	if err := writeSync(w, []int{3}); err != nil {
		t.Fatalf("write after recovery: %v", err)
	}
	w.Close()
	if err := writeSync(w, []int{4}); !errors.Is(err, errWriterClosed) {
		t.Fatalf("write after Close: %v, want errWriterClosed", err)
	}
	if stored.Load() != 1 {
		t.Fatalf("%d items stored, want 1", stored.Load())
	}
}

// A device that sends many posts without waiting gets every one stored
// and answered, in the order it sent them, although their commits end in
// groups: the connection keeps reading while posts wait for their commit.
func TestPipelinedPostsAreAnsweredInOrder(t *testing.T) {
	h := newTestHub(t)
	p := h.product("pkpipe", nil)
	d := h.device(p, "dev")
	c := h.connect(t, "pkpipe", "dev", d.DeviceSecret)
	const n = 300
	ids := make(chan int, n)
	topic := "/sys/pkpipe/dev/thing/measurepoint/post"
	if tok := c.Subscribe(topic+"_reply", 0, func(_ paho.Client, m paho.Message) {
		var r struct {
			ID   string
			Code int
		}
		json.Unmarshal(m.Payload(), &r)
		if r.Code != 200 {
			t.Errorf("post %s answered %d", r.ID, r.Code)
		}
		id, _ := strconv.Atoi(r.ID)
		ids <- id
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	toks := make([]paho.Token, n)
	for i := range n {
		toks[i] = c.Publish(topic, 1, false, fmt.Sprintf(`{"id":"%d","version":"1.0","method":"thing.measurepoint.post","params":{"measurepoints":{"n":%d}}}`, i, i))
	}
	for i, tok := range toks {
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("post %d not acknowledged: %v", i, tok.Error())
		}
	}
	for want := range n {
		select {
		case got := <-ids:
			if got != want {
				t.Fatalf("reply %d arrived in place of %d", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("reply %d missing", want)
		}
	}
	samples, err := h.db.RecentSamples(context.Background(), "pkpipe", "dev", 1000)
	if err != nil || len(samples) != n {
		t.Fatalf("%d posts stored (%v), want %d", len(samples), err, n)
	}
}

// writeSync writes items through w and waits for their outcome.
func writeSync[T any](w *groupWriter[T], items []T) error {
	ch := make(chan error, 1)
	w.WriteAsync(items, func(err error) { ch <- err })
	return <-ch
}
