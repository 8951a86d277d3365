package main

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// runStore: n devices post measurepoints (thing.measurepoint.post, the
// EnOS request envelope) at QoS 1 for dur, at rate posts per second in
// total (0: as fast as the broker acknowledges, window posts in flight per
// device). On the hub a PUBACK means the post is committed to the store,
// so PUBACKs per second are stored posts per second; on a plain broker the
// same publish is acknowledged unstored, a reference for the cost of
// storing. No one subscribes: the figure is the upstream path alone.
func (t *target) runStore(r *Result, transport string, n int, rate float64, dur time.Duration, window int) error {
	devs, err := t.fleet.pick(transport, n)
	if err != nil {
		return err
	}
	fc := t.connectMany(transport, devs, 0, 32, nil)
	defer fc.close(t.settle)
	r.Params = map[string]any{"transport": transport, "devices": n, "qos": 1, "rate": rate, "duration": dur.String(), "window": window}
	if fc.ok() != n {
		r.Errors = n - fc.ok()
		return fmt.Errorf("only %d of %d devices logged in", fc.ok(), n)
	}
	var sent, acked, failed atomic.Int64
	var lat latencies
	start := time.Now()
	deadline := start.Add(dur)
	var wg sync.WaitGroup
	for i, c := range fc.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			topic := devs[i].prefix() + "thing/measurepoint/post"
			inflight := make(chan struct{}, max(window, 1))
			var waits sync.WaitGroup
			p := newPacer(start, deadline, n, rate)
			for k := 0; p.next(k); k++ {
				inflight <- struct{}{}
				body := fmt.Sprintf(`{"id":"%d","version":"1.0","method":"thing.measurepoint.post","params":{"measurepoints":{"temp":%d.5,"power":{"value":%d,"quality":9}}}}`, k, k%100, k)
				t0 := time.Now()
				tok := c.Publish(topic, 1, false, body)
				sent.Add(1)
				waits.Add(1)
				go func(tok paho.Token) {
					defer waits.Done()
					if waitToken(tok) {
						lat.add(time.Since(t0))
						acked.Add(1)
					} else {
						failed.Add(1)
					}
					<-inflight
				}(tok)
			}
			waits.Wait()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	r.Errors = int(failed.Load() + fc.lost.Load())
	r.add("sent", float64(sent.Load())/elapsed.Seconds(), "msg/s", true)
	r.add("PUBACKs (stored on the hub)", float64(acked.Load())/elapsed.Seconds(), "msg/s", true)
	r.addLatency("PUBACK", lat.snapshot())
	return nil
}
