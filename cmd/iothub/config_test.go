package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServeConfigPrecedence: a serve flag comes from the command line, else
// IOTHUB_<NAME>, else the --config file, else its default; unknown keys and
// bad values are usage errors.
func TestServeConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "iothub.json")
	os.WriteFile(file, []byte(`{"mqtt": ":1883", "http": "127.0.0.1:9000", "metrics-public": true, "login-max-skew": "10m", "log-level": "warn"}`), 0o600)
	t.Setenv("IOTHUB_HTTP", "127.0.0.1:9100")
	cmd := newServeCmd()
	if err := cmd.ParseFlags([]string{"--config", file, "--log-level", "debug"}); err != nil {
		t.Fatal(err)
	}
	if err := applyConfig(cmd.Flags(), file); err != nil {
		t.Fatal(err)
	}
	for flag, want := range map[string]string{
		"mqtt":           ":1883",          // the file
		"http":           "127.0.0.1:9100", // the environment over the file
		"log-level":      "debug",          // the command line over both
		"metrics-public": "true",
		"login-max-skew": "10m0s",
		"mqtts":          ":18883", // the default
	} {
		if got := cmd.Flags().Lookup(flag).Value.String(); got != want {
			t.Errorf("--%s = %q, want %q", flag, got, want)
		}
	}

	for body, want := range map[string]string{
		`{"mqtt-port": 1}`:          `unknown key "mqtt-port"`,
		`{"metrics-public": "yes"}`: "--metrics-public",
		`["mqtt"]`:                  "not a JSON object",
	} {
		os.WriteFile(file, []byte(body), 0o600)
		err := applyConfig(newServeCmd().Flags(), file)
		if _, usage := err.(usageError); !usage || !strings.Contains(err.Error(), want) {
			t.Errorf("config %s: %v, want a usage error naming %s", body, err, want)
		}
	}
}

// TestPackagedConfig: the example config next to the systemd unit is one
// serve accepts.
func TestPackagedConfig(t *testing.T) {
	cmd := newServeCmd()
	if err := applyConfig(cmd.Flags(), filepath.Join("..", "..", "packaging", "iothub.json")); err != nil {
		t.Fatal(err)
	}
	if got := cmd.Flags().Lookup("data-dir").Value.String(); got != "/var/lib/iothub" {
		t.Fatalf("data-dir = %q", got)
	}
}
