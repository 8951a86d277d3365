package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/client"
)

// loadDevice is one device of a load run: it numbers its posts and
// records every acknowledgement it gets, a PUBACK or a reply with code 200,
// and every refusal, so that a test can compare what the hub acknowledged
// with what it stored.
type loadDevice struct {
	pk, dk, secret string

	mu      sync.Mutex
	next    int                // number of the next post
	ok      map[int]bool       // replies with code 200
	pubacks map[int]bool       // PUBACKs
	refused map[int]int        // number → reply code other than 200
	unnamed int                // error replies with no usable id (the request was not JSON)
	poison  func(n int) string // when set and non-empty for n, post this body instead
}

func newLoadDevice(pk, dk, secret string) *loadDevice {
	return &loadDevice{pk: pk, dk: dk, secret: secret, next: 1, ok: map[int]bool{}, pubacks: map[int]bool{}, refused: map[int]int{}}
}

func (d *loadDevice) topic() string { return "/sys/" + d.pk + "/" + d.dk + "/thing/measurepoint/post" }

// run logs the device in on broker and posts every interval at QoS 1 until
// stop closes or the connection is lost, recording PUBACKs and replies.
func (d *loadDevice) run(broker string, interval time.Duration, stop <-chan struct{}) error {
	o := deviceOptions(broker, d.pk, d.dk, d.secret, 2)
	lost := make(chan struct{})
	o.SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return fmt.Errorf("connect %s: %v", d.dk, tok.Error())
	}
	defer c.Disconnect(0)
	sub := c.Subscribe(d.topic()+"_reply", 0, func(_ paho.Client, m paho.Message) {
		var r struct {
			ID   string `json:"id"`
			Code int    `json:"code"`
		}
		if json.Unmarshal(m.Payload(), &r) != nil {
			return
		}
		n, err := strconv.Atoi(r.ID)
		d.mu.Lock()
		defer d.mu.Unlock()
		if err != nil {
			if r.Code != 200 {
				d.unnamed++
			}
			return
		}
		if r.Code == 200 {
			d.ok[n] = true
		} else {
			d.refused[n] = r.Code
		}
	})
	if !sub.WaitTimeout(10*time.Second) || sub.Error() != nil {
		return fmt.Errorf("subscribe %s: %v", d.dk, sub.Error())
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var inflight sync.WaitGroup
	for {
		select {
		case <-stop:
			// Wait for the answers to the posts in flight (their replies
			// come before their PUBACKs), but not forever.
			done := make(chan struct{})
			go func() { inflight.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
			}
			return nil
		case <-lost:
			return nil
		case <-t.C:
		}
		d.mu.Lock()
		n := d.next
		d.next++
		d.mu.Unlock()
		body := fmt.Sprintf(`{"id":"%d","version":"1.0","method":"thing.measurepoint.post","params":{"measurepoints":{"n":%d}}}`, n, n)
		if d.poison != nil {
			if p := d.poison(n); p != "" {
				body = p
			}
		}
		tok := c.Publish(d.topic(), 1, false, body)
		inflight.Add(1)
		go func() {
			defer inflight.Done()
			if tok.WaitTimeout(30*time.Second) && tok.Error() == nil {
				d.mu.Lock()
				d.pubacks[n] = true
				d.mu.Unlock()
			}
		}()
	}
}

// loadRun drives devices until stopped.
type loadRun struct {
	stop chan struct{}
	wg   sync.WaitGroup
	errs chan error
}

// startLoad starts every device posting every interval on broker.
func startLoad(devices []*loadDevice, broker string, interval time.Duration) *loadRun {
	r := &loadRun{stop: make(chan struct{}), errs: make(chan error, len(devices))}
	for _, d := range devices {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if err := d.run(broker, interval, r.stop); err != nil {
				r.errs <- err
			}
		}()
	}
	return r
}

// end stops the devices and fails the test if one could not run.
func (r *loadRun) end(t testing.TB) {
	t.Helper()
	close(r.stop)
	r.wg.Wait()
	// Let the last acknowledgements land in the records.
	time.Sleep(200 * time.Millisecond)
	close(r.errs)
	for err := range r.errs {
		t.Fatal(err)
	}
}

// loadTally sums a load run over its devices. A post is acknowledged
// when it got a 200 reply, or a PUBACK and no error reply.
type loadTally struct {
	posted, acked, refused, stored, missing int
}

func (l loadTally) String() string {
	return fmt.Sprintf("posted %d, acknowledged %d, refused %d, stored %d, acknowledged but missing %d",
		l.posted, l.acked, l.refused, l.stored, l.missing)
}

// tallyStored reads each device's stored posts through the API and counts
// the acknowledged ones that are missing.
func tallyStored(t testing.TB, api *client.Client, devices []*loadDevice) loadTally {
	t.Helper()
	var tally loadTally
	for _, d := range devices {
		stored := storedPosts(t, api, d)
		d.mu.Lock()
		tally.posted += d.next - 1
		tally.refused += len(d.refused)
		tally.stored += len(stored)
		for n := 1; n < d.next; n++ {
			code, answered := d.refused[n]
			switch {
			case answered && code == 503 && d.pubacks[n]:
				t.Errorf("device %s: post %d was PUBACKed although answered 'not stored'", d.dk, n)
			case answered && d.ok[n]:
				t.Errorf("device %s: post %d was answered both 200 and %d", d.dk, n, code)
			case answered:
				// Refused: a PUBACK of a post refused for its content only
				// says it was received and answered.
			case d.ok[n] || d.pubacks[n]:
				tally.acked++
				if !stored[n] {
					tally.missing++
					if tally.missing <= 5 {
						t.Errorf("device %s: post %d was acknowledged and is not stored", d.dk, n)
					}
				}
			}
		}
		d.mu.Unlock()
	}
	return tally
}

// storedPosts reads the numbers of a device's stored posts through the API.
func storedPosts(t testing.TB, api *client.Client, d *loadDevice) map[int]bool {
	t.Helper()
	var out struct {
		Samples []iothub.Sample `json:"samples"`
	}
	if err := api.Do(context.Background(), "GET", "/api/v1/products/"+d.pk+"/devices/"+d.dk+"/telemetry?limit=1000", nil, &out); err != nil {
		t.Fatalf("read telemetry of %s: %v", d.dk, err)
	}
	stored := map[int]bool{}
	for _, s := range out.Samples {
		var mp struct{ N int }
		if json.Unmarshal(s.Measurepoints, &mp) == nil {
			stored[mp.N] = true
		}
	}
	return stored
}

// loadDevices creates n devices in a new product through api.
func loadDevices(t testing.TB, api *client.Client, n int) []*loadDevice {
	t.Helper()
	ctx := context.Background()
	p, err := api.CreateProduct(ctx, map[string]any{"name": "load"})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]*loadDevice, n)
	for i := range out {
		d, err := api.CreateDevice(ctx, p.ProductKey, fmt.Sprintf("load%03d", i))
		if err != nil {
			t.Fatal(err)
		}
		out[i] = newLoadDevice(p.ProductKey, d.DeviceKey, d.DeviceSecret)
	}
	return out
}
