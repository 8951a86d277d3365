package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"
)

var (
	productCols = []string{"productKey", "name", "nodeType", "authMode", "dynamicActivation", "autoRegister", "orgId"}
	deviceCols  = []string{"productKey", "deviceKey", "state", "assetId", "lastSeenAt", "activatedAt"}
	certCols    = []string{"serial", "deviceKey", "status", "notAfter", "reason"}
)

func orgCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "org", Short: "Manage organisations"}
	cmd.AddCommand(
		apiCmd(g, "create NAME", "Create an organisation (bootstrap key)", cobra.ExactArgs(1), func(a []string) (call, error) {
			return call{method: "POST", path: "/api/v1/orgs", body: map[string]any{"name": a[0]}, columns: []string{"id", "name"}}, nil
		}),
		apiCmd(g, "list", "List organisations", cobra.NoArgs, func([]string) (call, error) {
			return call{method: "GET", path: "/api/v1/orgs", list: "orgs", columns: []string{"id", "name"}}, nil
		}),
	)
	return cmd
}

func apikeyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "apikey", Short: "Manage API keys"}
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
	cmd.AddCommand(create, revoke)
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
	cmd := &cobra.Command{Use: "product", Short: "Manage products"}
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
		apiCmd(g, "list", "List products", cobra.NoArgs, func([]string) (call, error) {
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
	cmd := &cobra.Command{Use: "device", Short: "Manage devices and talk to them"}
	var pk string
	cmd.PersistentFlags().StringVarP(&pk, "product", "p", "", "product key")
	cmd.MarkPersistentFlagRequired("product")
	dev := func(dk string) string { return "/api/v1/products/" + pk + "/devices/" + dk }
	var key, name, state string
	create := apiCmd(g, "create", "Register a device (its DeviceSecret is shown once)", cobra.NoArgs, func([]string) (call, error) {
		return call{method: "POST", path: "/api/v1/products/" + pk + "/devices", body: map[string]any{"deviceKey": key, "name": name},
			columns: []string{"productKey", "deviceKey", "deviceSecret", "assetId", "state"}}, nil
	})
	create.Flags().StringVar(&key, "device-key", "", "device key, e.g. the serial number (default: generated)")
	create.Flags().StringVar(&name, "name", "", "device name")
	list := apiCmd(g, "list", "List a product's devices", cobra.NoArgs, func([]string) (call, error) {
		path := "/api/v1/products/" + pk + "/devices?limit=1000"
		if state != "" {
			path += "&state=" + state
		}
		return call{method: "GET", path: path, list: "devices", columns: deviceCols}, nil
	})
	list.Flags().StringVar(&state, "state", "", "only devices in this state")
	lifecycle := func(verb, short string) *cobra.Command {
		return apiCmd(g, verb+" DK", short, cobra.ExactArgs(1), func(a []string) (call, error) {
			return call{method: "POST", path: dev(a[0]) + "/" + verb, columns: append(deviceCols, "deviceSecret")}, nil
		})
	}
	var params string
	var timeoutMs int
	invoke := apiCmd(g, "invoke DK SERVICE", "Invoke a service on a connected device and print its reply", cobra.ExactArgs(2), func(a []string) (call, error) {
		if !json.Valid([]byte(params)) {
			return call{}, fmt.Errorf("--params is not valid JSON")
		}
		return call{method: "POST", path: dev(a[0]) + "/services/" + a[1], body: map[string]any{"params": json.RawMessage(params), "timeoutMs": timeoutMs}, columns: []string{"code", "data", "message"}}, nil
	})
	invoke.Flags().StringVar(&params, "params", "{}", "service parameters as JSON")
	invoke.Flags().IntVar(&timeoutMs, "timeout-ms", 10000, "how long to wait for the reply")
	cmd.AddCommand(create, list, invoke,
		apiCmd(g, "get DK", "Show a device and its state", cobra.ExactArgs(1), func(a []string) (call, error) {
			return call{method: "GET", path: dev(a[0]), columns: deviceCols}, nil
		}),
		apiCmd(g, "delete DK", "Delete a device (closes its session)", cobra.ExactArgs(1), func(a []string) (call, error) {
			return call{method: "DELETE", path: dev(a[0])}, nil
		}),
		lifecycle("enable", "Enable a disabled device"),
		lifecycle("disable", "Disable a device (closes its session, refuses logins)"),
		lifecycle("reset", "Reset a device to inactive with a new DeviceSecret"),
		apiCmd(g, "measurepoints DK", "Show the latest value of each measurepoint", cobra.ExactArgs(1), func(a []string) (call, error) {
			return call{method: "GET", path: dev(a[0]) + "/measurepoints", list: "points", columns: []string{"name", "value", "time"}}, nil
		}),
	)
	return cmd
}

func certCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "cert", Short: "Issue, list and revoke device certificates"}
	var pk, dk, csrFile, reason string
	var days int
	issue := apiCmd(g, "issue", "Issue a certificate from a CSR, bound to a device", cobra.NoArgs, func([]string) (call, error) {
		csr, err := readFile(csrFile)
		if err != nil {
			return call{}, err
		}
		return call{method: "POST", path: "/api/v1/products/" + pk + "/devices/" + dk + "/certificates", body: map[string]any{"csr": csr, "validDays": days}, columns: []string{"serial", "notAfter", "cert"}}, nil
	})
	issue.Flags().StringVar(&csrFile, "csr", "", "PEM CSR file")
	issue.Flags().IntVar(&days, "days", 365, "validity in days (capped by the product)")
	list := apiCmd(g, "list", "List a device's certificates", cobra.NoArgs, func([]string) (call, error) {
		return call{method: "GET", path: "/api/v1/products/" + pk + "/devices/" + dk + "/certificates", list: "certificates", columns: certCols}, nil
	})
	for _, c := range []*cobra.Command{issue, list} {
		c.Flags().StringVarP(&pk, "product", "p", "", "product key")
		c.Flags().StringVarP(&dk, "device", "d", "", "device key")
		c.MarkFlagRequired("product")
		c.MarkFlagRequired("device")
	}
	issue.MarkFlagRequired("csr")
	revoke := apiCmd(g, "revoke SERIAL", "Revoke a certificate by serial number", cobra.ExactArgs(1), func(a []string) (call, error) {
		return call{method: "POST", path: "/api/v1/certificates/" + a[0] + "/revoke", body: map[string]any{"reason": reason}, columns: certCols}, nil
	})
	revoke.Flags().StringVar(&reason, "reason", "unspecified", "RFC 5280 reason, e.g. keyCompromise, superseded, cessationOfOperation")
	cmd.AddCommand(issue, list, revoke)
	return cmd
}

func caCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "ca", Short: "Register external CAs, proved by possession"}
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
