package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/iothub/iothub/client"
	"github.com/spf13/cobra"
)

var (
	productCols = []string{"productKey", "name", "nodeType", "authMode", "dynamicActivation", "autoRegister", "orgId"}
	deviceCols  = []string{"productKey", "deviceKey", "state", "assetId", "lastSeenAt", "activatedAt"}
	certCols    = []string{"serial", "deviceKey", "status", "notAfter", "reason"}
)

func orgCmd(g *globals) *cobra.Command {
	cmd := groupCmd("org", "Manage organisations")
	cmd.AddCommand(
		apiCmd(g, "create NAME", "Create an organisation (bootstrap key)", cobra.ExactArgs(1), func(a []string) (call, error) {
			return call{method: "POST", path: "/api/v1/orgs", body: map[string]any{"name": a[0]}, columns: []string{"id", "name"}}, nil
		}),
		listCmd(g, "list", "List organisations", "orgs", func() (call, error) {
			return call{method: "GET", path: "/api/v1/orgs", list: "orgs", columns: []string{"id", "name"}}, nil
		}),
	)
	return cmd
}

func apikeyCmd(g *globals) *cobra.Command {
	cmd := groupCmd("apikey", "Manage API keys")
	var org, name, role string
	create := apiCmd(g, "create", "Create an API key (shown once)", cobra.NoArgs, func([]string) (call, error) {
		return call{method: "POST", path: "/api/v1/orgs/" + org + "/apikeys", body: map[string]any{"name": name, "role": role}, columns: []string{"id", "role", "key"}}, nil
	})
	create.Flags().StringVar(&org, "org", "default", "organisation id")
	create.Flags().StringVar(&name, "name", "", "a label for the key")
	create.Flags().StringVar(&role, "role", "viewer", "admin, operator or viewer")
	var revokeOrg string
	revoke := apiCmd(g, "revoke ID", "Revoke an API key at once", cobra.ExactArgs(1), func(a []string) (call, error) {
		return call{method: "DELETE", path: "/api/v1/orgs/" + revokeOrg + "/apikeys/" + a[0]}, nil
	})
	revoke.Flags().StringVar(&revokeOrg, "org", "default", "organisation id")
	var listOrg string
	list := listCmd(g, "list", "List an organisation's API keys (never the keys themselves)", "apikeys", func() (call, error) {
		return call{method: "GET", path: "/api/v1/orgs/" + url.PathEscape(listOrg) + "/apikeys", list: "apikeys",
			columns: []string{"id", "name", "role", "bootstrap", "createdAt", "revokedAt"}}, nil
	})
	list.Flags().StringVar(&listOrg, "org", "default", "organisation id")
	cmd.AddCommand(create, list, revoke)
	return cmd
}

// productFlags are the settable product fields; only flags given are sent.
func productFlags(cmd *cobra.Command) func(body map[string]any) {
	f := cmd.Flags()
	name := f.String("name", "", "product name")
	mode := f.String("auth-mode", "secret", "secret or certificate")
	dyn := f.Bool("dynamic-activation", false, "allow dynamic activation (securemode 3)")
	auto := f.Bool("auto-register", false, "create unknown devices on a valid dynamic activation")
	limit := f.Int("device-limit", 0, "cap on auto-registered devices (0: default)")
	offline := f.Int("offline-timeout", 0, "seconds without data before a device is offline (0: 1.5 × keepalive)")
	days := f.Int("max-cert-days", 0, "cap on device certificate validity (0: default)")
	gwReg := f.Bool("allow-gateway-registration", false, "let gateways of the org register devices of this product")
	methods := f.StringSlice("sign-methods", nil, "login sign methods accepted, e.g. sha256,hmacsha256 (empty: all)")
	return func(body map[string]any) {
		set := map[string]any{"name": *name, "auth-mode": *mode, "dynamic-activation": *dyn, "auto-register": *auto,
			"device-limit": *limit, "offline-timeout": *offline, "max-cert-days": *days,
			"allow-gateway-registration": *gwReg, "sign-methods": *methods}
		field := map[string]string{"name": "name", "auth-mode": "authMode", "dynamic-activation": "dynamicActivation",
			"auto-register": "autoRegister", "device-limit": "deviceLimit", "offline-timeout": "offlineTimeoutSec", "max-cert-days": "maxCertDays",
			"allow-gateway-registration": "allowGatewayRegistration", "sign-methods": "signMethods"}
		for flag, v := range set {
			if f.Changed(flag) {
				body[field[flag]] = v
			}
		}
	}
}

func productCmd(g *globals) *cobra.Command {
	cmd := groupCmd("product", "Manage products")
	var org, key, nodeType string
	var createBody, updateBody func(map[string]any)
	create := apiCmd(g, "create", "Create a product (its ProductSecret is shown once)", cobra.NoArgs, func([]string) (call, error) {
		body := map[string]any{}
		createBody(body)
		if org != "" {
			body["orgId"] = org
		}
		if key != "" {
			body["productKey"] = key
		}
		if nodeType != "" {
			body["nodeType"] = nodeType
		}
		return call{method: "POST", path: "/api/v1/products", body: body, columns: append(productCols[:3:3], "productSecret", "authMode", "dynamicActivation", "autoRegister")}, nil
	})
	createBody = productFlags(create)
	create.Flags().StringVar(&org, "org", "", "organisation id (bootstrap key only)")
	create.Flags().StringVar(&key, "product-key", "", "product key (default: generated)")
	create.Flags().StringVar(&nodeType, "node-type", "", "device (default) or gateway; fixed at creation")
	update := apiCmd(g, "update PK", "Change a product's settings", cobra.ExactArgs(1), func(a []string) (call, error) {
		body := map[string]any{}
		updateBody(body)
		return call{method: "PATCH", path: "/api/v1/products/" + a[0], body: body, columns: productCols}, nil
	})
	updateBody = productFlags(update)
	cmd.AddCommand(create, update,
		listCmd(g, "list", "List products", "products", func() (call, error) {
			return call{method: "GET", path: "/api/v1/products", list: "products", columns: productCols}, nil
		}),
		apiCmd(g, "get PK", "Show a product", cobra.ExactArgs(1), func(a []string) (call, error) {
			return call{method: "GET", path: "/api/v1/products/" + a[0], columns: productCols}, nil
		}),
		apiCmd(g, "delete PK", "Delete a product that has no devices", cobra.ExactArgs(1), func(a []string) (call, error) {
			return call{method: "DELETE", path: "/api/v1/products/" + a[0]}, nil
		}),
		apiCmd(g, "rotate-secret PK", "Issue a new ProductSecret; the old one stops working", cobra.ExactArgs(1), func(a []string) (call, error) {
			return call{method: "POST", path: "/api/v1/products/" + a[0] + "/rotate-secret", columns: []string{"productKey", "productSecret"}}, nil
		}),
	)
	return cmd
}

func deviceCmd(g *globals) *cobra.Command {
	cmd := groupCmd("device", "Manage devices and talk to them")
	var pk string
	cmd.PersistentFlags().StringVarP(&pk, "product", "p", "", "product key (required)")
	// devCall builds a call on the product's devices, or on device a[0]
	// with suffix when one is given.
	devCall := func(method string, a []string, suffix string, c call) (call, error) {
		if pk == "" {
			return call{}, usageErrorf("--product (-p) is required")
		}
		c.method, c.path = method, "/api/v1/products/"+url.PathEscape(pk)+"/devices"
		if len(a) > 0 {
			c.path += "/" + url.PathEscape(a[0]) + suffix
		}
		return c, nil
	}
	var key, name, state string
	create := apiCmd(g, "create", "Register a device (its DeviceSecret is shown once)", cobra.NoArgs, func([]string) (call, error) {
		return devCall("POST", nil, "", call{body: map[string]any{"deviceKey": key, "name": name},
			columns: []string{"productKey", "deviceKey", "deviceSecret", "assetId", "state"}})
	})
	create.Flags().StringVar(&key, "device-key", "", "device key, e.g. the serial number (default: generated)")
	create.Flags().StringVar(&name, "name", "", "device name")
	list := listCmd(g, "list", "List a product's devices", "devices", func() (call, error) {
		c, err := devCall("GET", nil, "", call{list: "devices", columns: deviceCols})
		if state != "" {
			c.path += "?state=" + url.QueryEscape(state)
		}
		return c, err
	})
	list.Flags().StringVar(&state, "state", "", "only devices in this state")
	lifecycle := func(verb, short string) *cobra.Command {
		return apiCmd(g, verb+" DK", short, cobra.ExactArgs(1), func(a []string) (call, error) {
			return devCall("POST", a, "/"+verb, call{columns: append(deviceCols, "deviceSecret")})
		})
	}
	// read is a GET of one device's data.
	read := func(use, short, suffix, list string, cols ...string) *cobra.Command {
		return apiCmd(g, use, short, cobra.ExactArgs(1), func(a []string) (call, error) {
			return devCall("GET", a, suffix, call{list: list, columns: cols})
		})
	}
	var params string
	var timeoutMs int
	invoke := apiCmd(g, "invoke DK SERVICE", "Invoke a service on a connected device and print its reply", cobra.ExactArgs(2), func(a []string) (call, error) {
		if !json.Valid([]byte(params)) {
			return call{}, usageErrorf("--params is not valid JSON")
		}
		return devCall("POST", a, "/services/"+url.PathEscape(a[1]), call{body: map[string]any{"params": json.RawMessage(params), "timeoutMs": timeoutMs},
			columns: []string{"code", "data", "message"}})
	})
	invoke.Flags().StringVar(&params, "params", "{}", "service parameters as JSON")
	invoke.Flags().IntVar(&timeoutMs, "timeout-ms", 10000, "how long to wait for the reply")
	var recentLimit int
	history := func(use, short, suffix, list string, cols ...string) *cobra.Command {
		c := apiCmd(g, use, short, cobra.ExactArgs(1), func(a []string) (call, error) {
			c, err := devCall("GET", a, suffix, call{list: list, columns: cols})
			c.path += "?limit=" + strconv.Itoa(recentLimit)
			return c, err
		})
		c.Flags().IntVar(&recentLimit, "limit", 100, "how many of the newest to show (at most 1000)")
		return c
	}
	cmd.AddCommand(create, list, invoke,
		read("get DK", "Show a device and its state", "", "", deviceCols...),
		apiCmd(g, "delete DK", "Delete a device (closes its session)", cobra.ExactArgs(1), func(a []string) (call, error) {
			return devCall("DELETE", a, "", call{})
		}),
		lifecycle("enable", "Enable a disabled device"),
		lifecycle("disable", "Disable a device (closes its session, refuses logins)"),
		lifecycle("reset", "Reset a device to inactive with a new DeviceSecret"),
		read("measurepoints DK", "Show the latest value of each measurepoint", "/measurepoints", "points", "name", "value", "time"),
		history("telemetry DK", "Show a device's newest measurepoint posts", "/telemetry", "samples"),
		history("events DK", "Show a device's newest events", "/events", "events"),
		read("attributes DK", "Show a device's attributes", "/attributes", ""),
		read("tags DK", "Show a device's tags", "/tags", ""),
	)
	return cmd
}

func certCmd(g *globals) *cobra.Command {
	cmd := groupCmd("cert", "Issue, list, show, download and revoke device certificates")
	var pk, dk, csrFile, reason, issueOut, getOut string
	var days int
	issue := apiCmd(g, "issue", "Issue a certificate from a CSR, bound to a device", cobra.NoArgs, func([]string) (call, error) {
		csr, err := readFile(csrFile)
		if err != nil {
			return call{}, err
		}
		return call{method: "POST", path: "/api/v1/products/" + url.PathEscape(pk) + "/devices/" + url.PathEscape(dk) + "/certificates",
			body: map[string]any{"csr": csr, "validDays": days}, columns: []string{"serial", "notAfter"}, saveField: "cert", saveTo: issueOut}, nil
	})
	issue.Flags().StringVar(&csrFile, "csr", "", "PEM CSR file")
	issue.Flags().IntVar(&days, "days", 365, "validity in days (capped by the product)")
	issue.Flags().StringVar(&issueOut, "out", "", "write the PEM certificate to this file")
	list := apiCmd(g, "list", "List a device's certificates", cobra.NoArgs, func([]string) (call, error) {
		return call{method: "GET", path: "/api/v1/products/" + url.PathEscape(pk) + "/devices/" + url.PathEscape(dk) + "/certificates", list: "certificates", columns: certCols}, nil
	})
	for _, c := range []*cobra.Command{issue, list} {
		c.Flags().StringVarP(&pk, "product", "p", "", "product key")
		c.Flags().StringVarP(&dk, "device", "d", "", "device key")
		c.MarkFlagRequired("product")
		c.MarkFlagRequired("device")
	}
	issue.MarkFlagRequired("csr")
	get := apiCmd(g, "get SERIAL", "Show a certificate; --out writes its PEM to a file", cobra.ExactArgs(1), func(a []string) (call, error) {
		return call{method: "GET", path: "/api/v1/certificates/" + url.PathEscape(a[0]), columns: append(certCols, "productKey"), saveField: "cert", saveTo: getOut}, nil
	})
	get.Flags().StringVar(&getOut, "out", "", "write the PEM certificate to this file")
	revoke := apiCmd(g, "revoke SERIAL", "Revoke a certificate by serial number", cobra.ExactArgs(1), func(a []string) (call, error) {
		return call{method: "POST", path: "/api/v1/certificates/" + url.PathEscape(a[0]) + "/revoke", body: map[string]any{"reason": reason}, columns: certCols}, nil
	})
	revoke.Flags().StringVar(&reason, "reason", "unspecified", "RFC 5280 reason, e.g. keyCompromise, superseded, cessationOfOperation")
	cmd.AddCommand(issue, list, get, revoke)
	return cmd
}

// auditCols are the columns of an audit listing.
var auditCols = []string{"id", "time", "orgId", "kind", "productKey", "deviceKey", "remote", "reason"}

// auditCmd reads the security audit log, newest first, or follows it.
func auditCmd(g *globals) *cobra.Command {
	var org, kind, product, device, since, until string
	var follow bool
	var page *paging
	filter := func() url.Values {
		q := url.Values{}
		for k, v := range map[string]string{"orgId": org, "kind": kind, "productKey": product, "deviceKey": device, "since": since, "until": until} {
			if v != "" {
				q.Set(k, v)
			}
		}
		return q
	}
	cmd := apiCmd(g, "audit", "Show security events (logins, refusals, revocations, management writes), newest first", cobra.NoArgs, func([]string) (call, error) {
		return call{method: "GET", path: "/api/v1/audit?" + filter().Encode(), list: "events", columns: auditCols, page: page}, nil
	})
	list := cmd.RunE
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if !follow {
			return list(cmd, args)
		}
		if err := g.checkOutput(); err != nil {
			return err
		}
		cl, err := g.client(cmd)
		if err != nil {
			return err
		}
		return followAudit(cmd.Context(), cl, filter(), g.output, cmd.OutOrStdout())
	}
	f := cmd.Flags()
	f.StringVar(&org, "org", "", "only this organisation (bootstrap key; default every org the key sees)")
	f.StringVar(&kind, "kind", "", "only this kind (login.refused), or kinds with this prefix ending in a dot (login.)")
	f.StringVar(&product, "product", "", "only this product key")
	f.StringVar(&device, "device", "", "only this device key")
	f.StringVar(&since, "since", "", "only events at or after this RFC 3339 time")
	f.StringVar(&until, "until", "", "only events before this RFC 3339 time")
	f.BoolVarP(&follow, "follow", "f", false, "print events as they happen, oldest first, until interrupted")
	page = listFlags(cmd, "events")
	cmd.MarkFlagsMutuallyExclusive("follow", "cursor")
	return cmd
}

// followAudit prints the events q selects as they are recorded, one line
// each, polling every second until ctx ends.
func followAudit(ctx context.Context, cl *client.Client, q url.Values, format string, w io.Writer) error {
	var after int64
	for {
		if after > 0 {
			q.Set("after", strconv.FormatInt(after, 10))
		}
		q.Set("limit", strconv.Itoa(pageSize))
		var page struct{ Events []map[string]any }
		if err := cl.Do(ctx, "GET", "/api/v1/audit?"+q.Encode(), nil, &page); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if after == 0 { // the first answer is newest first: show it oldest first
			slices.Reverse(page.Events)
		}
		for _, e := range page.Events {
			if id, ok := e["id"].(float64); ok {
				after = max(after, int64(id))
			}
			if format == outJSON {
				b, _ := json.Marshal(e)
				fmt.Fprintf(w, "%s\n", b)
				continue
			}
			vals := make([]string, len(auditCols))
			for i, c := range auditCols {
				vals[i] = cell(e[c])
			}
			fmt.Fprintln(w, strings.Join(vals, "\t"))
		}
		if len(page.Events) == pageSize {
			continue // more are waiting
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// crlCmd downloads the hub CA's certificate revocation list.
func crlCmd(g *globals) *cobra.Command {
	var out string
	var der bool
	cmd := &cobra.Command{
		Use:   "crl",
		Short: "Download the CA's certificate revocation list (PEM, or DER with --der)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := g.publicClient("")
			if err != nil {
				return err
			}
			path := "/crl.pem"
			if der {
				path = "/crl"
			}
			var raw json.RawMessage // the body as it came
			if err := cl.Do(cmd.Context(), "GET", path, nil, &raw); err != nil {
				return err
			}
			if out == "" || out == "-" {
				_, err = cmd.OutOrStdout().Write(raw)
				return err
			}
			return os.WriteFile(out, raw, 0o644)
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "write to this file instead of stdout")
	cmd.Flags().BoolVar(&der, "der", false, "DER instead of PEM")
	return cmd
}

func caCmd(g *globals) *cobra.Command {
	cmd := groupCmd("ca", "Register external CAs, proved by possession")
	var pk, certFile, proofFile string
	register := apiCmd(g, "register", "Register a CA certificate for a product; prints the verification code", cobra.NoArgs, func([]string) (call, error) {
		cert, err := readFile(certFile)
		if err != nil {
			return call{}, err
		}
		return call{method: "POST", path: "/api/v1/cas", body: map[string]any{"cert": cert, "productKey": pk}, columns: []string{"id", "productKey", "verificationCode", "verified"}}, nil
	})
	register.Flags().StringVarP(&pk, "product", "p", "", "product key")
	register.Flags().StringVar(&certFile, "cert", "", "PEM CA certificate")
	register.MarkFlagRequired("product")
	register.MarkFlagRequired("cert")
	verify := apiCmd(g, "verify ID", "Prove possession: a certificate signed by the CA with CN = the verification code", cobra.ExactArgs(1), func(a []string) (call, error) {
		cert, err := readFile(proofFile)
		if err != nil {
			return call{}, err
		}
		return call{method: "POST", path: "/api/v1/cas/" + a[0] + "/verify", body: map[string]any{"cert": cert}, columns: []string{"id", "status", "productKey"}}, nil
	})
	verify.Flags().StringVar(&proofFile, "cert", "", "PEM proof certificate")
	verify.MarkFlagRequired("cert")
	remove := apiCmd(g, "remove ID", "Remove a CA, verified or not: its certificates stop logging in at once", cobra.ExactArgs(1), func(a []string) (call, error) {
		return call{method: "DELETE", path: "/api/v1/cas/" + a[0]}, nil
	})
	var serial, reason string
	revokeLeaf := apiCmd(g, "revoke-leaf ID", "Revoke a certificate the CA issued, by serial", cobra.ExactArgs(1), func(a []string) (call, error) {
		return call{method: "POST", path: "/api/v1/cas/" + a[0] + "/revocations", body: map[string]any{"serial": serial, "reason": reason},
			columns: []string{"caId", "serial", "reason", "revokedAt"}}, nil
	})
	revokeLeaf.Flags().StringVar(&serial, "serial", "", "the certificate's serial number in hex")
	revokeLeaf.Flags().StringVar(&reason, "reason", "unspecified", "RFC 5280 reason, e.g. keyCompromise, cessationOfOperation")
	revokeLeaf.MarkFlagRequired("serial")
	cmd.AddCommand(register, verify, remove, revokeLeaf)
	return cmd
}

func authorityCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "authority", Short: "Rotate and retire the hub's own CAs (bootstrap key)"}
	cols := []string{"id", "kind", "status", "subject", "notAfter"}
	var root bool
	rotate := apiCmd(g, "rotate", "Make a new issuing CA active (--root: a new root, cross-signed by the old one)", cobra.NoArgs, func([]string) (call, error) {
		return call{method: "POST", path: "/api/v1/authority/rotate", body: map[string]any{"root": root}, columns: []string{"id", "issuingId"}}, nil
	})
	rotate.Flags().BoolVar(&root, "root", false, "rotate the root CA too")
	cmd.AddCommand(
		apiCmd(g, "list", "List the hub's CAs and their status", cobra.NoArgs, func([]string) (call, error) {
			return call{method: "GET", path: "/api/v1/authority", list: "authorities", columns: cols}, nil
		}),
		rotate,
		apiCmd(g, "retire ID", "Stop trusting a CA: its certificates are refused, its sessions closed", cobra.ExactArgs(1), func(a []string) (call, error) {
			return call{method: "POST", path: "/api/v1/authority/" + a[0] + "/retire", columns: []string{"retired"}}, nil
		}),
	)
	return cmd
}
