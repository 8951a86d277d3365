package edge

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// request publishes a request and waits for its reply on topic_reply.
func (a *Agent) request(ctx context.Context, c mqtt.Client, suffix, method string, params any) (*reply, error) {
	id := a.newID()
	ch := make(chan reply, 1)
	a.mu.Lock()
	a.pending[id] = ch
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.pending, id)
		a.mu.Unlock()
	}()
	b, err := json.Marshal(map[string]any{"id": id, "version": "1.0", "method": method, "params": params})
	if err != nil {
		return nil, err
	}
	if t := c.Publish(a.topic(suffix), 1, false, b); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		return nil, fmt.Errorf("edge: publish %s: %v", method, t.Error())
	}
	select {
	case r := <-ch:
		return &r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(a.cfg.RequestTimeout):
		return nil, fmt.Errorf("edge: no reply to %s within %v", method, a.cfg.RequestTimeout)
	}
}

// renew gets a successor certificate for a fresh key over MQTT.
func (a *Agent) renew(ctx context.Context, c mqtt.Client) error {
	if err := a.checkClock(); err != nil {
		return err
	}
	key, err := a.ks.Create(slotNext, a.cfg.KeyType)
	if err != nil {
		return err
	}
	csr, err := NewCSR(key, a.cfg.ProductKey, a.cfg.DeviceKey)
	if err != nil {
		return err
	}
	r, err := a.request(ctx, c, "thing/certificate/renew", "thing.certificate.renew", map[string]string{"csr": csr})
	if err != nil {
		return err
	}
	if r.Code != 200 {
		return fmt.Errorf("edge: renewal refused: code %d %s", r.Code, r.Message)
	}
	var iss struct{ Serial, Cert, CAChain string }
	if err := json.Unmarshal(r.Data, &iss); err != nil {
		return fmt.Errorf("edge: renewal reply: %w", err)
	}
	// Check everything before the key swap, so a bad answer leaves the
	// current key and certificate as they were.
	cert, err := a.checkIssued(key, iss.Cert, iss.CAChain)
	if err != nil {
		return err
	}
	a.setKey(nil)
	if err := a.ks.Rename(slotNext, slotCurrent); err != nil {
		return err
	}
	a.setKey(key)
	if err := a.writeIssued(cert, iss.Serial, iss.Cert, iss.CAChain); err != nil {
		return err
	}
	a.log.Info("certificate renewed", "serial", iss.Serial, "notAfter", cert.NotAfter)
	a.emit("renewed")
	return nil
}
