package mqtt

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/feed"
)

// errWriterClosed refuses a write that arrives after Close.
var errWriterClosed = errors.New("mqtt: the hub is stopping")

// groupWriter stores what devices post by group commit: a write waits
// until the transaction holding it has committed (or failed), and every
// write that arrives while a transaction runs joins the next one, so a
// flood of posts costs one transaction per batch, not one per message, and
// a device waits about one commit for its answer.
//
// A failed batch is split and its halves retried, so that a write the
// store refuses fails alone and the others are stored. Splitting stops
// once a batch has spent splitBudget: a store that is down fails every
// write of the batch instead of being asked 2n times.
type groupWriter[T any] struct {
	commit      func(ctx context.Context, items []T) error
	in          chan *groupWrite[T]
	maxItems    int
	timeout     time.Duration // per commit attempt
	splitBudget time.Duration // per batch, retries included
	onFailure   func(items int, err error)

	mu     sync.RWMutex
	closed bool
	done   chan struct{}
}

// groupWrite is one caller's items and where its outcome goes.
type groupWrite[T any] struct {
	items []T
	done  func(error) // called on the writer's goroutine: must not block
}

// newGroupWriter starts a writer that stores through commit, at most
// maxItems per transaction; onFailure hears of every write refused.
func newGroupWriter[T any](commit func(context.Context, []T) error, maxItems int, onFailure func(items int, err error)) *groupWriter[T] {
	w := &groupWriter[T]{
		commit:   commit,
		in:       make(chan *groupWrite[T], 4*maxItems),
		maxItems: maxItems, timeout: 5 * time.Second, splitBudget: 2 * time.Second,
		onFailure: onFailure,
		done:      make(chan struct{}),
	}
	go w.run()
	return w
}

// WriteAsync queues items and calls done with the outcome once the
// transaction holding them has committed (nil) or failed; done runs on the
// writer's goroutine and must not block. WriteAsync blocks while the queue
// is full (back-pressure on the device's connection); after Close, done
// gets errWriterClosed at once.
func (w *groupWriter[T]) WriteAsync(items []T, done func(error)) {
	w.mu.RLock()
	if w.closed {
		w.mu.RUnlock()
		done(errWriterClosed)
		return
	}
	w.in <- &groupWrite[T]{items: items, done: done}
	w.mu.RUnlock()
}

// Close stops accepting writes and returns once every queued one has been
// committed or refused.
func (w *groupWriter[T]) Close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	close(w.in)
	w.mu.Unlock()
	<-w.done
}

func (w *groupWriter[T]) run() {
	defer close(w.done)
	batch := make([]*groupWrite[T], 0, w.maxItems)
	for first := range w.in {
		batch = append(batch[:0], first)
		n := len(first.items)
		// Take whatever else is already waiting: the group of this commit.
	drain:
		for n < w.maxItems {
			select {
			case gw, ok := <-w.in:
				if !ok {
					break drain
				}
				batch = append(batch, gw)
				n += len(gw.items)
			default:
				break drain
			}
		}
		w.flush(batch)
		clear(batch)
	}
}

// flush commits batch, splitting it on failure within the split budget,
// and answers every write in it.
func (w *groupWriter[T]) flush(batch []*groupWrite[T]) {
	deadline := time.Now().Add(w.splitBudget)
	var attempt func(part []*groupWrite[T])
	attempt = func(part []*groupWrite[T]) {
		items := make([]T, 0, countItems(part))
		for _, gw := range part {
			items = append(items, gw.items...)
		}
		ctx, cancel := context.WithTimeout(context.Background(), w.timeout)
		err := w.commit(ctx, items)
		cancel()
		if err == nil {
			for _, gw := range part {
				gw.done(nil)
			}
			return
		}
		if len(part) == 1 || time.Now().After(deadline) {
			w.onFailure(len(items), err)
			for _, gw := range part {
				gw.done(err)
			}
			return
		}
		half := len(part) / 2
		attempt(part[:half])
		attempt(part[half:])
	}
	attempt(batch)
}

func countItems[T any](part []*groupWrite[T]) int {
	n := 0
	for _, gw := range part {
		n += len(gw.items)
	}
	return n
}

// recorded is commit followed by the feed's record of what it committed,
// in the same group, so the change log holds the batch (in commit order)
// before any of its writers is answered. With no feed it is commit.
func recorded[T any](commit func(context.Context, []T) error, f *feed.Feed, changes func([]T) []iothub.DataChange) func(context.Context, []T) error {
	if f == nil {
		return commit
	}
	return func(ctx context.Context, items []T) error {
		if err := commit(ctx, items); err != nil {
			return err
		}
		return f.Record(ctx, changes(items))
	}
}
