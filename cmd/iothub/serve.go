package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/iothub/iothub/hub"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func newServeCmd() *cobra.Command {
	var cfg hub.Config
	var hostnames, logLevel, logFormat, configFile string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the hub: MQTT, MQTT over TLS, the REST API and the CA",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyConfig(cmd.Flags(), configFile); err != nil {
				return err
			}
			logger, err := newLogger(cmd.ErrOrStderr(), logLevel, logFormat)
			if err != nil {
				return err
			}
			cfg.Logger = logger
			for _, h := range strings.Split(hostnames, ",") {
				if h = strings.TrimSpace(h); h != "" {
					cfg.Hostnames = append(cfg.Hostnames, h)
				}
			}
			h, err := hub.Open(cfg)
			if err != nil {
				return err
			}
			stop := make(chan os.Signal, 2)
			signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
			sig := <-stop
			cfg.Logger.Info("shutting down; a second signal stops at once", "signal", sig.String())
			closed := make(chan error, 1)
			go func() { closed <- h.Close() }()
			select {
			case err := <-closed:
				return err
			case sig := <-stop:
				cfg.Logger.Warn("stopping at once", "signal", sig.String())
				os.Exit(1)
				return nil
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", os.Getenv("IOTHUB_CONFIG"), "JSON file of flag values keyed by flag name, e.g. {\"mqtt\": \":1883\"}; every flag is also read from IOTHUB_<NAME> (env IOTHUB_CONFIG)")
	f.StringVar(&cfg.DatabaseURL, "database", "", "PostgreSQL URL postgres://… shared by the nodes of a cluster (default: SQLite in the data directory)")
	f.StringVar(&cfg.NATSURL, "nats", "", "NATS URL nats://… carrying events between nodes (default: in-process)")
	f.StringVar(&cfg.DataDir, "data-dir", "./data", "data directory (database, CA, keys)")
	f.SetNormalizeFunc(dataDirAlias)
	f.StringVar(&cfg.Durability, "durability", hub.DurabilityProcess, "what an acknowledged post survives: process (kill -9) or power (power loss too: an fsync per SQLite commit)")
	f.StringVar(&cfg.MQTTAddr, "mqtt", hub.DefaultMQTTAddr, "plain MQTT listen address (empty: off)")
	f.StringVar(&cfg.MQTTSAddr, "mqtts", hub.DefaultMQTTSAddr, "MQTT over TLS listen address (empty: off)")
	f.StringVar(&cfg.HTTPAddr, "http", hub.DefaultHTTPAddr, "REST API listen address (empty: off)")
	f.StringVar(&cfg.HTTPSAddr, "https", hub.DefaultHTTPSAddr, "REST API over TLS listen address (empty: off)")
	f.StringVar(&hostnames, "hostname", "localhost,127.0.0.1", "DNS names and IPs in the hub's server certificate")
	f.StringVar(&cfg.PublicURL, "public-url", "", "base URL put in certificates for CRL, CA and OCSP (default: the https listener)")
	f.StringVar(&cfg.ServerKey, "server-key", hub.ServerKeyClient, "hub certificate for TLS clients: client (ECDSA to clients preferring it, else RSA-2048), rsa or ecdsa")
	f.BoolVar(&cfg.TLSLegacySuites, "tls-legacy-suites", false, "also offer TLS 1.2 RSA key exchange suites (AES-128 GCM/CBC) on --mqtts, for device stacks without ECDHE such as the EnOS C SDK's mbedtls; no forward secrecy")
	f.BoolVar(&cfg.MetricsPublic, "metrics-public", false, "also serve /metrics on the https listener (default: only on --http)")
	f.DurationVar(&cfg.LoginMaxSkew, "login-max-skew", 0, "refuse MQTT logins whose signed timestamp is further than this from the hub's clock, e.g. 10m (0: off, as in EnOS; the C SDK signs a fixed timestamp)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text (key=value) or json, one object per line")
	return cmd
}

// newAdminKeyCmd is the offline management of the bootstrap key, which the
// API can never revoke (F3).
func newAdminKeyCmd() *cobra.Command {
	cmd := groupCmd("admin-key", "Manage the bootstrap admin API key offline")
	var data, database string
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Replace the bootstrap key with a new one, written to DATA/admin.key",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyConfig(cmd.Flags(), ""); err != nil {
				return err
			}
			if _, err := hub.RotateAdminKey(data, database); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "bootstrap key rotated; the new key is in %s\n", filepath.Join(data, "admin.key"))
			return nil
		},
	}
	rotate.Flags().StringVar(&data, "data-dir", "./data", "the hub's data directory")
	rotate.Flags().SetNormalizeFunc(dataDirAlias)
	rotate.Flags().StringVar(&database, "database", "", "the hub's PostgreSQL URL, if it uses one (every flag is also read from IOTHUB_<NAME>)")
	cmd.AddCommand(rotate)
	return cmd
}

// dataDirAlias keeps --data, the flag's former name, working for scripts
// written before it was --data-dir everywhere; help shows one name.
func dataDirAlias(_ *pflag.FlagSet, name string) pflag.NormalizedName {
	if name == "data" {
		name = "data-dir"
	}
	return pflag.NormalizedName(name)
}

// newLogger is the hub's logger: level and format (text or json) from flags.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageErrorf("--log-level %q: debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usageErrorf("--log-format %q: text or json", format)
}
