// Command iotedge is the iothub edge agent: it activates the device with
// its factory credentials, enrolls a certificate for a key kept in a file
// or a TPM, keeps a mutual-TLS MQTT session to the hub, posts measurepoints
// and answers service calls (run), and revokes and wipes its keys (reset).
//
// Exit status: 0 after SIGINT/SIGTERM, 3 when the hub refuses the device
// for good (revoked, not registered, disabled: restarting will not help),
// 1 on any other error.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/iothub/iothub/edge"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// exitRefused is the status when the hub refuses the device for good.
const exitRefused = 3

func main() {
	err := newRootCmd().Execute()
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, "iotedge:", err)
	if errors.Is(err, edge.ErrRevoked) || errors.Is(err, edge.ErrRefused) {
		os.Exit(exitRefused)
	}
	os.Exit(1)
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "iotedge",
		Short:         "Edge agent for iothub: activation, certificate enrollment, mutual TLS, telemetry and commands",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(runCmd(), resetCmd())
	return root
}

// options are the flags of run and reset; a config file holds the same
// names as JSON keys.
type options struct {
	config, state, ca, broker, api          string
	productKey, productSecret, deviceKey    string
	auth, keyType, keystore, passphraseFile string
	tpmDevice, tpmSWTPM, logLevel           string
	metricsCommand, serviceCommand          string
	interval                                time.Duration
	trustRefresh                            time.Duration
}

func (o *options) flags(f *pflag.FlagSet) {
	f.StringVar(&o.config, "config", "", "JSON config file whose keys are these flag names (flags given win)")
	f.StringVar(&o.state, "state", "", "state directory (created 0700): device secret, certificate, keys")
	f.StringVar(&o.ca, "ca", "", "pinned CA bundle the hub must chain to (GET /ca.pem from the hub, out of band)")
	f.StringVar(&o.broker, "broker", "", "MQTT broker URL, ssl://HOST:PORT or tcp://HOST:PORT")
	f.StringVar(&o.api, "api", "", "hub HTTPS API base URL, https://HOST:PORT")
	f.StringVar(&o.productKey, "product-key", "", "product key")
	f.StringVar(&o.productSecret, "product-secret", "", "factory product secret for dynamic activation (env IOTEDGE_PRODUCT_SECRET)")
	f.StringVar(&o.deviceKey, "device-key", "", "device key: the serial number")
	f.StringVar(&o.auth, "auth", "", "certificate or secret (default certificate when --ca is given with an ssl:// broker)")
	f.StringVar(&o.keyType, "key-type", "rsa2048", "rsa2048 or p256")
	f.StringVar(&o.keystore, "keystore", "file", "file or tpm")
	f.StringVar(&o.passphraseFile, "passphrase-file", "", "file holding a passphrase that seals the file key store")
	f.StringVar(&o.tpmDevice, "tpm-device", "/dev/tpmrm0", "TPM character device for --keystore tpm")
	f.StringVar(&o.tpmSWTPM, "tpm-swtpm", "", "HOST:PORT of a TPM simulator (swtpm; control port PORT+1) instead of --tpm-device")
	f.StringVar(&o.metricsCommand, "metrics-command", "", "command printing one JSON object of measurepoints (default: load, memory, uptime)")
	f.StringVar(&o.serviceCommand, "service-command", "", "command answering other service calls: gets the service id as last argument and params on stdin, prints JSON")
	f.DurationVar(&o.interval, "interval", 5*time.Second, "measurepoint period")
	f.DurationVar(&o.trustRefresh, "trust-refresh", edge.DefaultTrustRefresh, "how often to refresh the hub's signed trust bundle and CRLs (also at start; negative: never)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
}

// applyConfig fills every flag not given on the command line from the
// config file.
func (o *options) applyConfig(f *pflag.FlagSet) error {
	if o.config == "" {
		return nil
	}
	b, err := os.ReadFile(o.config)
	if err != nil {
		return err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("config %s: %w", o.config, err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fl := f.Lookup(k)
		if fl == nil || k == "config" {
			return fmt.Errorf("config %s: unknown key %q (use the flag names)", o.config, k)
		}
		if fl.Changed {
			continue
		}
		var s string
		switch v := m[k].(type) {
		case string:
			s = v
		case float64, bool:
			s = fmt.Sprint(v)
		default:
			return fmt.Errorf("config %s: %q must be a string, number or boolean", o.config, k)
		}
		if err := fl.Value.Set(s); err != nil {
			return fmt.Errorf("config %s: %s: %w", o.config, k, err)
		}
	}
	return nil
}

func (o *options) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, err
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})), nil
}

// agentConfig turns the options into an edge.Config with its key store.
func (o *options) agentConfig(log *slog.Logger) (edge.Config, error) {
	cfg := edge.Config{
		StateDir: o.state, CAFile: o.ca, Broker: o.broker, API: o.api,
		ProductKey: o.productKey, ProductSecret: firstOf(o.productSecret, os.Getenv("IOTEDGE_PRODUCT_SECRET")),
		DeviceKey: o.deviceKey, Auth: o.auth, Interval: o.interval, TrustRefresh: o.trustRefresh, KeyType: edge.KeyType(o.keyType),
		Logger: log,
	}
	if o.metricsCommand != "" {
		argv := strings.Fields(o.metricsCommand)
		cfg.Metrics = func(ctx context.Context) (map[string]any, error) { return edge.CommandMetrics(ctx, argv) }
	}
	if o.serviceCommand != "" {
		cfg.ServiceCommand = strings.Fields(o.serviceCommand)
	}
	switch o.keystore {
	case "file":
		if o.passphraseFile != "" {
			b, err := os.ReadFile(o.passphraseFile)
			if err != nil {
				return cfg, err
			}
			cfg.Passphrase = []byte(strings.TrimRight(string(b), "\r\n"))
			if len(cfg.Passphrase) == 0 {
				return cfg, fmt.Errorf("passphrase file %s is empty", o.passphraseFile)
			}
		}
	case "tpm":
		if o.state == "" {
			return cfg, errors.New("--state is required")
		}
		if _, err := edge.OpenState(o.state); err != nil {
			return cfg, err
		}
		var ks *edge.TPMKeyStore
		var err error
		if o.tpmSWTPM != "" {
			ks, err = openSWTPM(o.state, o.tpmSWTPM)
		} else {
			ks, err = edge.OpenTPM(o.state, o.tpmDevice)
		}
		if err != nil {
			return cfg, err
		}
		cfg.KeyStore = ks
	default:
		return cfg, fmt.Errorf("--keystore %q: use file or tpm", o.keystore)
	}
	return cfg, nil
}

func openSWTPM(dir, addr string) (*edge.TPMKeyStore, error) {
	i := strings.LastIndexByte(addr, ':')
	var port int
	if i < 0 {
		return nil, fmt.Errorf("--tpm-swtpm %q: want HOST:PORT", addr)
	}
	if _, err := fmt.Sscanf(addr[i+1:], "%d", &port); err != nil || port <= 0 || port >= 65535 {
		return nil, fmt.Errorf("--tpm-swtpm %q: want HOST:PORT", addr)
	}
	return edge.OpenSWTPM(dir, addr, fmt.Sprintf("%s:%d", addr[:i], port+1))
}

func firstOf(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// prepare applies the config file and builds the agent; closeAll releases
// the agent and the key store.
func prepare(cmd *cobra.Command, o *options) (a *edge.Agent, log *slog.Logger, closeAll func(), err error) {
	if err := o.applyConfig(cmd.Flags()); err != nil {
		return nil, nil, nil, err
	}
	if log, err = o.logger(); err != nil {
		return nil, nil, nil, err
	}
	cfg, err := o.agentConfig(log)
	if err != nil {
		return nil, nil, nil, err
	}
	closeKS := func() {
		if cfg.KeyStore != nil {
			cfg.KeyStore.Close()
		}
	}
	if a, err = edge.New(cfg); err != nil {
		closeKS()
		return nil, nil, nil, err
	}
	return a, log, func() { a.Close(); closeKS() }, nil
}

func runCmd() *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Activate, enroll, connect and serve until stopped",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, _, closeAll, err := prepare(cmd, o)
			if err != nil {
				return err
			}
			defer closeAll()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return a.Run(ctx)
		},
	}
	o.flags(cmd.Flags())
	return cmd
}

func resetCmd() *cobra.Command {
	o := &options{}
	var force bool
	cmd := &cobra.Command{
		Use:   "reset",
		Short: "Ask the hub to revoke this device's certificate, then wipe keys and secrets from the state dir",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, log, closeAll, err := prepare(cmd, o)
			if err != nil {
				return err
			}
			defer closeAll()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := a.Reset(ctx, force); err != nil {
				return err
			}
			log.Info("reset done: certificate revoked, keys and secrets wiped", "state", o.state)
			return nil
		},
	}
	o.flags(cmd.Flags())
	cmd.Flags().BoolVar(&force, "force", false, "wipe even if the hub cannot be reached to revoke the certificate")
	return cmd
}
