package e2e

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkCreateDeviceAPI measures device registration through the REST
// API: HTTP, API key check, validation, sealing and the SQLite insert.
func BenchmarkCreateDeviceAPI(b *testing.B) {
	th := startHub(b, "")
	p := th.newProduct(b, map[string]any{"name": "bench"})
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := th.admin.CreateDevice(ctx, p.ProductKey, fmt.Sprintf("dev-%d", i)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGetDeviceAPI measures a device read through the REST API.
func BenchmarkGetDeviceAPI(b *testing.B) {
	th := startHub(b, "")
	p := th.newProduct(b, map[string]any{"name": "bench"})
	th.newDevice(b, p, "dev-1")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := th.admin.Device(ctx, p.ProductKey, "dev-1"); err != nil {
			b.Fatal(err)
		}
	}
}
