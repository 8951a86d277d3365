package edge

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iothub/iothub/sign"
)

// ensureSecret makes sure the DeviceSecret is known: from the config, the
// state dir, or dynamic activation.
func (a *Agent) ensureSecret(ctx context.Context) error {
	s, err := a.state.Read(FileDeviceSecret)
	if err != nil {
		return err
	}
	if s == "" && a.cfg.DeviceSecret != "" {
		s = a.cfg.DeviceSecret
		if err := a.state.Write(FileDeviceSecret, s); err != nil {
			return err
		}
	}
	if s != "" {
		a.setSecret(s)
		return nil
	}
	if a.cfg.ProductSecret == "" {
		return fmt.Errorf("edge: no DeviceSecret in %s and no ProductSecret to activate with", a.state.Dir)
	}
	bo := Backoff{Min: a.cfg.BackoffMin, Max: a.cfg.BackoffMax}
	refusals := 0
	for {
		s, err := a.activate(ctx)
		if err == nil {
			if err := a.state.Write(FileDeviceSecret, s); err != nil {
				return err
			}
			a.setSecret(s)
			a.log.Info("activated: DeviceSecret stored; the factory ProductSecret is no longer needed")
			a.emit("activated")
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// A refusal may be throttling (MQTT 3.1.1 has one code for all),
		// so only the third one in a row is taken as final.
		if refused(err) {
			refusals++
		}
		if refusals >= 3 {
			return fmt.Errorf("%w: dynamic activation refused (%v): the device must be registered with this serial, the product must allow dynamic activation, and a device already activated cannot activate again", ErrRefused, err)
		}
		d := bo.Next()
		a.log.Warn("activation failed, will retry", "err", err, "in", d.Round(time.Millisecond))
		if !sleep(ctx, d) {
			return ctx.Err()
		}
	}
}

func (a *Agent) setSecret(s string) {
	a.mu.Lock()
	a.secret = s
	a.mu.Unlock()
}

func (a *Agent) deviceSecret() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.secret
}

// activate logs in with securemode 3 and waits for the DeviceSecret the
// hub pushes on /ext/session/{pk}/{dk}/thing/activate/info.
func (a *Agent) activate(ctx context.Context) (string, error) {
	topic := "/ext/session/" + a.cfg.ProductKey + "/" + a.cfg.DeviceKey + "/thing/activate/info"
	got := make(chan string, 1)
	onMsg := func(c mqtt.Client, m mqtt.Message) {
		if m.Topic() != topic {
			return
		}
		var req struct {
			ID     json.RawMessage `json:"id"`
			Params struct {
				ProductKey   string `json:"productKey"`
				DeviceKey    string `json:"deviceKey"`
				DeviceSecret string `json:"deviceSecret"`
			} `json:"params"`
		}
		if json.Unmarshal(m.Payload(), &req) != nil || req.Params.DeviceSecret == "" ||
			req.Params.DeviceKey != a.cfg.DeviceKey || req.Params.ProductKey != a.cfg.ProductKey {
			a.log.Warn("ignoring a malformed activation message")
			return
		}
		b, _ := json.Marshal(map[string]any{"id": req.ID, "code": 200, "message": ""})
		c.Publish(topic+"_reply", 1, false, b).WaitTimeout(5 * time.Second)
		select {
		case got <- req.Params.DeviceSecret:
		default:
		}
	}
	c, err := a.connect(ctx, sign.ModeDynamic, a.cfg.ProductSecret, false, onMsg, nil)
	if err != nil {
		return "", err
	}
	defer c.Disconnect(250)
	select {
	case s := <-got:
		return s, nil
	case <-ctx.Done():
		return "", ctx.Err()
	case <-time.After(a.cfg.RequestTimeout):
		return "", fmt.Errorf("edge: no activation info from the hub within %v", a.cfg.RequestTimeout)
	}
}
