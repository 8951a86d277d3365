package main

import (
	"flag"
	"log/slog"
	"os"
	"strings"

	"github.com/iothub/iothub/hub"
)

// hubFlags declares the serve flags the in-process hub takes.
func hubFlags(fs *flag.FlagSet) func() hub.Config {
	var cfg hub.Config
	fs.StringVar(&cfg.DataDir, "data", "./data", "data directory")
	fs.StringVar(&cfg.MQTTAddr, "mqtt", "127.0.0.1:11883", "plain MQTT listen address")
	fs.StringVar(&cfg.MQTTSAddr, "mqtts", "127.0.0.1:18883", "MQTT over TLS listen address")
	fs.StringVar(&cfg.HTTPAddr, "http", "127.0.0.1:8080", "REST API listen address")
	fs.StringVar(&cfg.HTTPSAddr, "https", "127.0.0.1:8443", "REST API over TLS listen address")
	hostnames := fs.String("hostname", "localhost,127.0.0.1", "names in the hub's server certificate")
	return func() hub.Config {
		cfg.Hostnames = strings.Split(*hostnames, ",")
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
		return cfg
	}
}

// openHub starts a hub node.
func openHub(cfg hub.Config) (*hub.Hub, error) { return hub.Open(cfg) }
