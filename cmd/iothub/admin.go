package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/iothub/iothub/client"
	"github.com/spf13/cobra"
)

// globals are the flags every admin command shares.
type globals struct {
	server, key, data, caFile, output string
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "iothub",
		Short:         "A security-first IoT device hub (EnOS-compatible MQTT, CA, mutual TLS)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.server, "server", "", "hub API base URL (env IOTHUB_SERVER; default http://127.0.0.1:8080)")
	pf.StringVar(&g.key, "key", "", "API key (env IOTHUB_API_KEY; default the contents of DATA/admin.key)")
	pf.StringVar(&g.data, "data-dir", "./data", "data directory holding admin.key, used when no key is given")
	pf.StringVar(&g.caFile, "cacert", "", "CA file to trust for an https server (default DATA/ca/chain.pem if present)")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	root.AddCommand(newServeCmd(), newAdminKeyCmd(), newSignCmd(), orgCmd(g), apikeyCmd(g), productCmd(g), deviceCmd(g), certCmd(g), caCmd(g), authorityCmd(g))
	return root
}

// client builds an API client from flags, environment and defaults.
func (g *globals) client() (*client.Client, error) {
	server := firstOf(g.server, os.Getenv("IOTHUB_SERVER"), "http://127.0.0.1:8080")
	key := firstOf(g.key, os.Getenv("IOTHUB_API_KEY"))
	if key == "" {
		b, err := os.ReadFile(filepath.Join(g.data, "admin.key"))
		if err != nil {
			return nil, fmt.Errorf("no API key: pass --key, set IOTHUB_API_KEY, or run next to the hub's data dir (%v)", err)
		}
		key = strings.TrimSpace(string(b))
	}
	var ca []byte
	if g.caFile != "" {
		b, err := os.ReadFile(g.caFile)
		if err != nil {
			return nil, err
		}
		ca = b
	}
	return client.New(server, key, ca)
}

func firstOf(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// call is what one admin command sends.
type call struct {
	method, path string
	body         any
	// list names the array field of the answer shown as table rows ("" for one object).
	list    string
	columns []string
}

// apiCmd makes a command that sends the call built from its flags and
// arguments and prints the answer.
func apiCmd(g *globals, use, short string, args cobra.PositionalArgs, build func(args []string) (call, error)) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := build(args)
			if err != nil {
				return err
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			defer cancel()
			var raw json.RawMessage
			if err := cl.Do(ctx, c.method, c.path, c.body, &raw); err != nil {
				return err
			}
			return render(cmd.OutOrStdout(), g.output, raw, c)
		},
	}
}

// render prints raw as indented JSON or as a table of c.columns.
func render(w io.Writer, format string, raw json.RawMessage, c call) error {
	if format == "json" || len(raw) == 0 {
		_, err := w.Write(raw)
		return err
	}
	if format != "table" {
		return fmt.Errorf("unknown output format %q (table or json)", format)
	}
	var rows []map[string]any
	if c.list != "" {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			return err
		}
		if err := json.Unmarshal(m[c.list], &rows); err != nil {
			return fmt.Errorf("answer has no list %q: %w", c.list, err)
		}
	} else {
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			return err
		}
		rows = []map[string]any{m}
	}
	cols := c.columns
	if len(cols) == 0 && len(rows) > 0 {
		for k := range rows[0] {
			cols = append(cols, k)
		}
		sort.Strings(cols)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.ToUpper(strings.Join(cols, "\t")))
	for _, r := range rows {
		vals := make([]string, len(cols))
		for i, col := range cols {
			vals[i] = cell(r[col])
		}
		fmt.Fprintln(tw, strings.Join(vals, "\t"))
	}
	return tw.Flush()
}

func cell(v any) string {
	switch v := v.(type) {
	case nil:
		return "-"
	case string:
		return v
	case float64, bool:
		return fmt.Sprint(v)
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}
