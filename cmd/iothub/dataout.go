package main

import (
	"encoding/json"
	"errors"
	"net/url"
	"os/signal"
	"strings"
	"syscall"

	"github.com/iothub/iothub/client"
	"github.com/spf13/cobra"
)

// streamCmd follows the live stream and prints one JSON object a line:
// {"id","kind","data"}. It resumes by itself after a dropped connection.
func streamCmd(g *globals) *cobra.Command {
	var pk, dk, kinds, after string
	var count int
	cmd := &cobra.Command{
		Use:   "stream",
		Short: "Follow devices' posts, events, attributes and states live, as JSON lines",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := g.client(cmd)
			if err != nil {
				return err
			}
			q := url.Values{}
			for k, v := range map[string]string{"productKey": pk, "deviceKey": dk, "kinds": kinds} {
				if v != "" {
					q.Set(k, v)
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			out := json.NewEncoder(cmd.OutOrStdout())
			seen := 0
			err = cl.Stream(ctx, q, after, func(ev client.StreamEvent) error {
				if err := out.Encode(map[string]any{"id": ev.ID, "kind": ev.Kind, "data": json.RawMessage(ev.Data)}); err != nil {
					return err
				}
				if seen++; count > 0 && seen >= count {
					return errDone
				}
				return nil
			})
			if ctx.Err() != nil || errors.Is(err, errDone) {
				return nil
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVarP(&pk, "product", "p", "", "only this product")
	f.StringVarP(&dk, "device", "d", "", "only this device (needs --product)")
	f.StringVar(&kinds, "kinds", "", "comma-separated: measurepoints, events, attributes, states (default all)")
	f.StringVar(&after, "after", "", "resume after this event id (default: from now on)")
	f.IntVarP(&count, "count", "n", 0, "stop after this many events (default: follow until interrupted)")
	return cmd
}

// errDone ends a stream that printed --count events.
var errDone = errors.New("stream: count reached")

func ruleCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "rule", Short: "Forward devices' data to a webhook or a NATS subject"}
	cols := []string{"id", "name", "productKey", "kinds", "webhook", "nats", "status"}
	var name, pk, kinds, hook, secret, subject string
	create := apiCmd(g, "create", "Create a forwarding rule (--webhook URL --secret S, or --nats SUBJECT)", cobra.NoArgs, func([]string) (call, error) {
		body := map[string]any{"name": name, "productKey": pk}
		if kinds != "" {
			body["kinds"] = strings.Split(kinds, ",")
		}
		if hook != "" {
			body["webhook"] = map[string]string{"url": hook, "secret": secret}
		}
		if subject != "" {
			body["nats"] = map[string]string{"subject": subject}
		}
		return call{method: "POST", path: "/api/v1/rules", body: body, columns: []string{"id"}}, nil
	})
	f := create.Flags()
	f.StringVar(&name, "name", "", "rule name")
	f.StringVarP(&pk, "product", "p", "", "only this product's devices")
	f.StringVar(&kinds, "kinds", "", "comma-separated kinds (default all)")
	f.StringVar(&hook, "webhook", "", "http(s) URL each change is POSTed to")
	f.StringVar(&secret, "secret", "", "webhook signing secret (16 to 256 bytes)")
	f.StringVar(&subject, "nats", "", "NATS subject each change is published on")
	cmd.AddCommand(create,
		apiCmd(g, "list", "List forwarding rules and their delivery status", cobra.NoArgs, func([]string) (call, error) {
			return call{method: "GET", path: "/api/v1/rules", list: "rules", columns: cols}, nil
		}),
		apiCmd(g, "get ID", "Show a rule and its delivery status", cobra.ExactArgs(1), func(a []string) (call, error) {
			return call{method: "GET", path: "/api/v1/rules/" + url.PathEscape(a[0]), columns: cols}, nil
		}),
		apiCmd(g, "delete ID", "Delete a rule", cobra.ExactArgs(1), func(a []string) (call, error) {
			return call{method: "DELETE", path: "/api/v1/rules/" + url.PathEscape(a[0])}, nil
		}),
	)
	return cmd
}
