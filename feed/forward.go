package feed

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/iothub/iothub"
)

// Headers of a webhook delivery.
const (
	// SignatureHeader carries "sha256=" and the hex HMAC-SHA256 of the
	// body under the rule's secret.
	SignatureHeader = "X-Iothub-Signature"
	// DeliveryHeader carries the change's id: a receiver that sees an id
	// twice has seen a redelivery (deliveries are at least once).
	DeliveryHeader = "X-Iothub-Delivery"
	// KindHeader carries the change's kind.
	KindHeader = "X-Iothub-Kind"
)

// Sign is the SignatureHeader value of body under secret.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Forwarder delivers the changes of every forwarding rule, each rule by
// one node at a time (a lease in the store), in order, at least once: a
// rule's cursor moves past a change only once it is delivered, and a
// failed delivery is retried with backoff until it succeeds or the rule is
// deleted.
type Forwarder struct {
	feed   *Feed
	store  iothub.DataLog
	log    *slog.Logger
	owner  string
	client *http.Client
	// nats publishes on a subject and returns once the server has it; nil
	// when the hub runs without NATS.
	nats func(subject string, data []byte) error

	mu      sync.Mutex
	running map[string]context.CancelFunc
	wg      sync.WaitGroup
	stop    chan struct{}
}

// Lease timing: a rule's deliverer renews its lease every leaseRenew; a
// node that dies loses its rules after leaseFor.
const (
	leaseFor   = 15 * time.Second
	leaseRenew = 5 * time.Second
	maxBackoff = 30 * time.Second
)

// NewForwarder starts delivering rules. nats may be nil.
func NewForwarder(f *Feed, nats func(subject string, data []byte) error) *Forwarder {
	fw := &Forwarder{feed: f, store: f.cfg.Store, log: f.cfg.Logger, owner: iothub.RandomString(16),
		client: &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a redirect is not a delivery
		}},
		nats: nats, running: map[string]context.CancelFunc{}, stop: make(chan struct{})}
	fw.wg.Add(1)
	go fw.watch()
	return fw
}

// Close stops every delivery and returns once they ended.
func (fw *Forwarder) Close() {
	close(fw.stop)
	fw.mu.Lock()
	for _, cancel := range fw.running {
		cancel()
	}
	fw.mu.Unlock()
	fw.wg.Wait()
}

// Sync starts delivering new rules and stops deleted ones at once, rather
// than at the next periodic look.
func (fw *Forwarder) Sync() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rules, err := fw.store.Rules(ctx, "")
	if err != nil {
		fw.log.Warn("feed: listing forwarding rules", "error", err)
		return
	}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	select {
	case <-fw.stop:
		return
	default:
	}
	live := map[string]bool{}
	for _, r := range rules {
		live[r.ID] = true
		if _, ok := fw.running[r.ID]; !ok {
			ctx, cancel := context.WithCancel(context.Background())
			fw.running[r.ID] = cancel
			fw.wg.Add(1)
			go fw.deliver(ctx, r)
		}
	}
	for id, cancel := range fw.running {
		if !live[id] {
			cancel()
			delete(fw.running, id)
		}
	}
}

// watch looks for new and deleted rules every few seconds (those of
// other nodes' API calls included).
func (fw *Forwarder) watch() {
	defer fw.wg.Done()
	t := time.NewTicker(3 * time.Second)
	defer t.Stop()
	for {
		fw.Sync()
		select {
		case <-fw.stop:
			return
		case <-t.C:
		}
	}
}

// deliver runs one rule while this node holds its lease.
func (fw *Forwarder) deliver(ctx context.Context, r *iothub.Rule) {
	defer fw.wg.Done()
	for ctx.Err() == nil {
		held, err := fw.store.LeaseRule(ctx, r.ID, fw.owner, time.Now(), time.Now().Add(leaseFor))
		if err != nil || !held {
			if err != nil && ctx.Err() == nil {
				fw.log.Warn("feed: leasing a forwarding rule", "rule", r.ID, "error", err)
			}
			sleep(ctx, leaseRenew)
			continue
		}
		fw.deliverLeased(ctx, r)
	}
}

// deliverLeased delivers r's changes until the lease needs renewing.
func (fw *Forwarder) deliverLeased(ctx context.Context, r *iothub.Rule) {
	cur, err := fw.store.Rule(ctx, "", r.ID) // the cursor another node may have moved
	if err != nil {
		if iothub.ErrorCode(err) != iothub.ENOTFOUND && ctx.Err() == nil {
			fw.log.Warn("feed: reading a forwarding rule", "rule", r.ID, "error", err)
		}
		sleep(ctx, time.Second)
		return
	}
	renewAt := time.Now().Add(leaseRenew)
	lctx, cancel := context.WithDeadline(ctx, renewAt)
	defer cancel()
	filter := iothub.DataFilter{After: cur.Status.Cursor, OrgID: r.OrgID, ProductKey: r.ProductKey, Kinds: r.Kinds, Limit: 100}
	backoff := time.Second
	_ = fw.feed.Follow(lctx, filter, func(changes []iothub.DataChange) error {
		// The cursor moves once per batch (and on the way out), not per
		// delivery: a crash redelivers at most a batch.
		var cursor int64
		n := 0
		defer func() {
			if n > 0 {
				if err := fw.store.RuleDelivered(ctx, r.ID, cursor, n); err != nil {
					fw.log.Warn("feed: recording deliveries", "rule", r.ID, "error", err)
				}
			}
		}()
		for _, ch := range changes {
			for {
				err := fw.send(lctx, r, ch)
				if err == nil {
					break
				}
				if lctx.Err() != nil {
					return lctx.Err()
				}
				if err := fw.store.RuleFailed(ctx, r.ID, err.Error(), time.Now()); err != nil {
					fw.log.Warn("feed: recording a failed delivery", "rule", r.ID, "error", err)
				}
				if !sleep(lctx, backoff/2+rand.N(backoff/2+1)) {
					return lctx.Err()
				}
				backoff = min(2*backoff, maxBackoff)
			}
			backoff = time.Second
			cursor, n = ch.ID, n+1
		}
		return nil
	})
}

// send delivers one change to r's target.
func (fw *Forwarder) send(ctx context.Context, r *iothub.Rule, ch iothub.DataChange) error {
	if r.NATS != nil {
		if fw.nats == nil {
			return fmt.Errorf("the hub runs without NATS")
		}
		return fw.nats(r.NATS.Subject, ch.Data)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.Webhook.URL, bytes.NewReader(ch.Data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "iothub-webhook")
	req.Header.Set(SignatureHeader, Sign(r.Webhook.Secret, ch.Data))
	req.Header.Set(DeliveryHeader, strconv.FormatInt(ch.ID, 10))
	req.Header.Set(KindHeader, string(ch.Kind))
	resp, err := fw.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d): // collected once fired or dropped (Go 1.23)
		return true
	}
}
