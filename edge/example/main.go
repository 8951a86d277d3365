// Command example shows a device maker's program built on package edge:
// factory credentials in, and the library does activation, certificate
// enrollment, the mutual-TLS session, reconnection and the built-in
// handlers. The program adds its own measurepoints, one service and a
// reaction to measurepoint set.
//
//	go run ./edge/example -state /tmp/dev1 -ca ca.pem \
//	    -broker ssl://127.0.0.1:18883 -api https://127.0.0.1:8443 \
//	    -pk PRODUCT_KEY -ps PRODUCT_SECRET -sn SN-0001
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"math/rand/v2"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/iothub/iothub/edge"
)

func main() {
	state := flag.String("state", "./device-state", "state directory")
	ca := flag.String("ca", "ca.pem", "the hub's CA bundle")
	broker := flag.String("broker", "ssl://127.0.0.1:18883", "MQTT broker")
	api := flag.String("api", "https://127.0.0.1:8443", "hub HTTPS API")
	pk := flag.String("pk", "", "product key")
	ps := flag.String("ps", os.Getenv("PRODUCT_SECRET"), "product secret (factory)")
	sn := flag.String("sn", "", "serial number (device key)")
	flag.Parse()

	var fanOn atomic.Bool
	agent, err := edge.New(edge.Config{
		StateDir: *state, CAFile: *ca, Broker: *broker, API: *api,
		ProductKey: *pk, ProductSecret: *ps, DeviceKey: *sn,
		KeyType:  edge.P256,
		Interval: 10 * time.Second,
		// Our own sensor readings instead of the built-in system metrics.
		Metrics: func(context.Context) (map[string]any, error) {
			return map[string]any{"temperature": 20 + rand.Float64()*5, "fan": fanOn.Load()}, nil
		},
		// A service the operator can call: POST …/services/fan {"params":{"on":true}}.
		Services: map[string]edge.Handler{
			"fan": func(_ context.Context, params json.RawMessage) (any, error) {
				var p struct {
					On bool `json:"on"`
				}
				if err := json.Unmarshal(params, &p); err != nil {
					return nil, &edge.ServiceError{Code: 1220, Message: "params must be {\"on\": bool}"}
				}
				fanOn.Store(p.On)
				return map[string]any{"fan": p.On}, nil
			},
		},
		OnSet: func(_ context.Context, points map[string]any) error {
			log.Printf("operator set %v", points)
			return nil
		},
		OnState: func(s string) { log.Printf("agent: %s", s) },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer agent.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := agent.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
