package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/iothub/iothub/client"
	"github.com/spf13/cobra"
)

// globals are the flags every API command shares.
type globals struct {
	server, key, keyFile, data, caFile, output string
}

// Output formats of the API commands.
const (
	outTable = "table"
	outJSON  = "json"
)

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "iothub",
		Short:         "A security-first IoT device hub (EnOS-compatible MQTT, CA, mutual TLS)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newServeCmd(), newAdminKeyCmd(), newSignCmd(), newVersionCmd())
	for _, c := range []*cobra.Command{orgCmd(g), apikeyCmd(g), productCmd(g), deviceCmd(g), certCmd(g), caCmd(g), auditCmd(g), crlCmd(g), authorityCmd(g), streamCmd(g), ruleCmd(g)} {
		g.register(c)
		root.AddCommand(c)
	}
	return root
}

// register adds the shared API flags to a command group.
func (g *globals) register(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.StringVar(&g.server, "server", "", "hub API base URL (env IOTHUB_SERVER; default http://127.0.0.1:8080)")
	pf.StringVar(&g.key, "key", "", "API key (env IOTHUB_API_KEY; default the contents of DATA/admin.key)")
	pf.StringVar(&g.keyFile, "key-file", "", "read the API key from this file (- for stdin)")
	pf.StringVar(&g.data, "data-dir", "./data", "the hub's data directory, whose admin.key is used when no key is given")
	pf.StringVar(&g.caFile, "cacert", "", "CA file to trust for an https server (default DATA/ca/root.pem if present)")
	pf.StringVarP(&g.output, "output", "o", outTable, "output format: table or json")
}

// checkOutput refuses an unknown output format before anything is sent.
func (g *globals) checkOutput() error {
	if g.output != outTable && g.output != outJSON {
		return usageErrorf("unknown output format %q: table or json", g.output)
	}
	return nil
}

// client builds an API client from flags, environment and defaults.
func (g *globals) client(cmd *cobra.Command) (*client.Client, error) {
	key, err := readSecret(cmd, "API key", firstOf(g.key, os.Getenv("IOTHUB_API_KEY")), g.keyFile)
	if err != nil {
		return nil, err
	}
	if key == "" {
		b, err := os.ReadFile(filepath.Join(g.data, "admin.key"))
		if err != nil {
			return nil, fmt.Errorf("no API key: pass --key or --key-file, set IOTHUB_API_KEY, or run next to the hub's data dir (%v)", err)
		}
		key = strings.TrimSpace(string(b))
	}
	return g.publicClient(key)
}

// publicClient is a client with the given key ("" for public routes).
func (g *globals) publicClient(key string) (*client.Client, error) {
	server := firstOf(g.server, os.Getenv("IOTHUB_SERVER"), "http://127.0.0.1:8080")
	caFile := g.caFile
	if caFile == "" {
		if def := filepath.Join(g.data, "ca", "root.pem"); fileExists(def) {
			caFile = def
		}
	}
	var ca []byte
	if caFile != "" {
		var err error
		if ca, err = os.ReadFile(caFile); err != nil {
			return nil, err
		}
	}
	return client.New(server, key, ca)
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
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
	// page, when set, pages through a list that answers with nextCursor.
	page *paging
	// saveField names a string field of the answer written to saveTo.
	saveField, saveTo string
}

// paging is how far a list command reads.
type paging struct {
	limit  int // rows wanted; 0 with all
	all    bool
	cursor string
}

// pageSize is the most rows the API gives in one answer.
const pageSize = 1000

// listFlags adds --limit, --all and --cursor to a list command.
func listFlags(cmd *cobra.Command, noun string) *paging {
	p := &paging{}
	f := cmd.Flags()
	f.IntVar(&p.limit, "limit", pageSize, "show at most this many "+noun+"; a note on stderr says when more remain")
	f.BoolVar(&p.all, "all", false, "page through every "+noun[:len(noun)-1])
	f.StringVar(&p.cursor, "cursor", "", "start after this cursor (printed when a listing stops early)")
	cmd.MarkFlagsMutuallyExclusive("limit", "all")
	return p
}

// listCmd makes a command that pages through a list (the call's list
// field) with --limit, --all and --cursor.
func listCmd(g *globals, use, short, noun string, build func() (call, error)) *cobra.Command {
	var page *paging
	cmd := apiCmd(g, use, short, cobra.NoArgs, func([]string) (call, error) {
		c, err := build()
		c.page = page
		return c, err
	})
	page = listFlags(cmd, noun)
	return cmd
}

// apiCmd makes a command that sends the call built from its flags and
// arguments and prints the answer.
func apiCmd(g *globals, use, short string, args cobra.PositionalArgs, build func(args []string) (call, error)) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  usageArgs(args),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			c, err := build(args)
			if err != nil {
				return err
			}
			if c.page != nil && c.page.limit < 1 && !c.page.all {
				return usageErrorf("--limit must be at least 1")
			}
			cl, err := g.client(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			defer cancel()
			var raw json.RawMessage
			if c.page != nil {
				raw, err = fetchPages(ctx, cl, c, cmd.ErrOrStderr())
			} else {
				err = cl.Do(ctx, c.method, c.path, c.body, &raw)
			}
			if err != nil {
				return err
			}
			if c.saveTo != "" {
				if err := saveField(raw, c.saveField, c.saveTo); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s to %s\n", c.saveField, c.saveTo)
			}
			return render(cmd.OutOrStdout(), g.output, raw, c)
		},
	}
}

// fetchPages reads c's list page by page, following nextCursor, until the
// rows wanted are in or the list ends. It answers {list: rows} with
// nextCursor set, and a note on stderr, when it stopped early.
func fetchPages(ctx context.Context, cl *client.Client, c call, stderr io.Writer) (json.RawMessage, error) {
	var rows []json.RawMessage
	cursor := c.page.cursor
	for {
		n := pageSize
		if !c.page.all {
			n = min(pageSize, c.page.limit-len(rows))
		}
		q := url.Values{"limit": {strconv.Itoa(n)}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		sep := "?"
		if strings.Contains(c.path, "?") {
			sep = "&"
		}
		var page map[string]json.RawMessage
		if err := cl.Do(ctx, c.method, c.path+sep+q.Encode(), nil, &page); err != nil {
			return nil, err
		}
		var got []json.RawMessage
		if err := json.Unmarshal(page[c.list], &got); err != nil {
			return nil, fmt.Errorf("answer has no list %q: %w", c.list, err)
		}
		rows = append(rows, got...)
		cursor = ""
		if b, ok := page["nextCursor"]; ok {
			json.Unmarshal(b, &cursor)
		}
		if cursor == "" || len(got) == 0 {
			break
		}
		if !c.page.all && len(rows) >= c.page.limit {
			// A full last page carries a cursor even when nothing follows.
			var probe map[string]json.RawMessage
			q = url.Values{"limit": {"1"}, "cursor": {cursor}}
			if err := cl.Do(ctx, c.method, c.path+sep+q.Encode(), nil, &probe); err != nil {
				return nil, err
			}
			var more []json.RawMessage
			if json.Unmarshal(probe[c.list], &more) != nil || len(more) == 0 {
				cursor = ""
				break
			}
			fmt.Fprintf(stderr, "iothub: stopped after %d %s; more remain: add --cursor %s to continue, or --all\n", len(rows), c.list, cursor)
			break
		}
	}
	out := map[string]any{c.list: rows}
	if cursor != "" {
		out["nextCursor"] = cursor
	}
	return json.Marshal(out)
}

// saveField writes the string field of the JSON object raw to path.
func saveField(raw json.RawMessage, field, path string) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	var v string
	if err := json.Unmarshal(m[field], &v); err != nil || v == "" {
		return fmt.Errorf("the answer has no %s to write", field)
	}
	return os.WriteFile(path, []byte(v), 0o644)
}

// render prints raw as JSON or as a table of c.columns.
func render(w io.Writer, format string, raw json.RawMessage, c call) error {
	if len(raw) == 0 {
		return nil
	}
	if format == outJSON {
		var buf bytes.Buffer
		if err := json.Indent(&buf, raw, "", "  "); err != nil {
			return err
		}
		buf.WriteByte('\n')
		_, err := buf.WriteTo(w)
		return err
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
