package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// onMessage routes everything the hub sends: replies to our requests,
// service calls and measurepoint set (which arrive unsubscribed).
func (a *Agent) onMessage(c mqtt.Client, m mqtt.Message) {
	topic := m.Topic()
	prefix := a.topic("")
	if !strings.HasPrefix(topic, prefix) {
		return
	}
	rest := topic[len(prefix):]
	if rest == trustUpdateTopic {
		select {
		case a.trustNow <- struct{}{}:
		default:
		}
		return
	}
	if strings.HasSuffix(rest, "_reply") {
		var r struct {
			ID json.RawMessage `json:"id"`
			reply
		}
		if json.Unmarshal(m.Payload(), &r) != nil {
			return
		}
		id := strings.Trim(string(r.ID), `"`)
		a.mu.Lock()
		ch := a.pending[id]
		a.mu.Unlock()
		if ch != nil {
			select {
			case ch <- r.reply:
			default:
			}
		}
		return
	}
	var req struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
		Params json.RawMessage `json:"params"`
	}
	if err := json.Unmarshal(m.Payload(), &req); err != nil {
		a.answer(c, topic, nil, 1220, nil, "payload is not a JSON request")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var data any
	var err error
	switch {
	case rest == "thing/service/measurepoint/set":
		data, err = a.onSet(ctx, req.Params)
	case rest == "thing/service/measurepoint/get":
		data, err = a.onGet(req.Params)
	case strings.HasPrefix(rest, "thing/service/") && !strings.Contains(rest[len("thing/service/"):], "/"):
		data, err = a.callService(ctx, rest[len("thing/service/"):], req.Params)
	default:
		err = &ServiceError{Code: 1101, Message: "no handler for " + rest}
	}
	code, msg := 200, ""
	if err != nil {
		code, msg = 500, err.Error()
		var se *ServiceError
		if errors.As(err, &se) {
			code, msg = se.Code, se.Message
		}
	}
	a.answer(c, topic, req.ID, code, data, msg)
}

func (a *Agent) answer(c mqtt.Client, topic string, id json.RawMessage, code int, data any, msg string) {
	if data == nil {
		data = map[string]any{}
	}
	b, err := json.Marshal(map[string]any{"id": id, "code": code, "data": data, "message": msg})
	if err != nil {
		b, _ = json.Marshal(map[string]any{"id": id, "code": 500, "data": map[string]any{}, "message": "reply not encodable"})
	}
	c.Publish(topic+"_reply", 1, false, b).WaitTimeout(10 * time.Second)
}

func (a *Agent) onSet(ctx context.Context, params json.RawMessage) (any, error) {
	var points map[string]any
	if err := json.Unmarshal(params, &points); err != nil || points == nil {
		return nil, &ServiceError{Code: 1220, Message: "params must be an object of measurepoints"}
	}
	if a.cfg.OnSet != nil {
		if err := a.cfg.OnSet(ctx, points); err != nil {
			return nil, err
		}
	}
	a.mu.Lock()
	for k, v := range points {
		a.setPoints[k] = v
	}
	a.mu.Unlock()
	return map[string]any{}, nil
}

// onGet answers measurepoint get: params is a list of names (all when
// empty) and the data their latest values.
func (a *Agent) onGet(params json.RawMessage) (any, error) {
	var names []string
	if len(params) > 0 && string(params) != "null" {
		if err := json.Unmarshal(params, &names); err != nil {
			return nil, &ServiceError{Code: 1220, Message: "params must be a list of measurepoint names"}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]any{}
	for k, v := range a.last {
		out[k] = v
	}
	if len(names) > 0 {
		out = map[string]any{}
		for _, n := range names {
			if v, ok := a.last[n]; ok {
				out[n] = v
			}
		}
	}
	return out, nil
}

func (a *Agent) callService(ctx context.Context, id string, params json.RawMessage) (any, error) {
	if h, ok := a.cfg.Services[id]; ok {
		return h(ctx, params)
	}
	switch id {
	case "ping":
		return map[string]any{"pong": true, "time": time.Now().UnixMilli()}, nil
	case "echo":
		if len(params) == 0 {
			return map[string]any{}, nil
		}
		return params, nil
	case "reboot":
		// The agent does not reboot the machine: it records the request
		// for the operator's tooling and starts a new session.
		rec, _ := json.Marshal(map[string]any{"time": time.Now().UTC().Format(time.RFC3339), "params": params})
		if err := a.state.Write(FileReboot, string(rec)); err != nil {
			return nil, err
		}
		go func() {
			time.Sleep(200 * time.Millisecond) // let the reply go out first
			select {
			case a.reconnect <- struct{}{}:
			default:
			}
		}()
		return map[string]any{"accepted": true}, nil
	}
	if len(a.cfg.ServiceCommand) > 0 {
		return a.runServiceCommand(ctx, id, params)
	}
	return nil, &ServiceError{Code: 1101, Message: "no handler for service " + id}
}

func (a *Agent) runServiceCommand(ctx context.Context, id string, params json.RawMessage) (any, error) {
	argv := append(append([]string(nil), a.cfg.ServiceCommand...), id)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = bytes.NewReader(params)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 200 {
			msg = msg[:200]
		}
		return nil, &ServiceError{Code: 500, Message: fmt.Sprintf("service command failed: %v %s", err, msg)}
	}
	out = bytes.TrimSpace(out)
	if len(out) == 0 {
		return map[string]any{}, nil
	}
	if !json.Valid(out) {
		return nil, &ServiceError{Code: 500, Message: "service command did not print JSON"}
	}
	return json.RawMessage(out), nil
}
