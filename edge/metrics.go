package edge

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// SystemMetrics reads built-in measurepoints from /proc: load averages,
// memory (total, available, used percent) and uptime in seconds.
func SystemMetrics() (map[string]any, error) {
	m := map[string]any{}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		for i, name := range []string{"load1", "load5", "load15"} {
			if i < len(f) {
				if v, err := strconv.ParseFloat(f[i], 64); err == nil {
					m[name] = v
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var total, avail float64
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				continue
			}
			switch f[0] {
			case "MemTotal:":
				total = v * 1024
			case "MemAvailable:":
				avail = v * 1024
			}
		}
		if total > 0 {
			m["memTotal"] = total
			m["memAvailable"] = avail
			m["memUsedPercent"] = 100 * (total - avail) / total
		}
	}
	if b, err := os.ReadFile("/proc/uptime"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			if v, err := strconv.ParseFloat(f[0], 64); err == nil {
				m["uptime"] = v
			}
		}
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("edge: no system metrics readable from /proc")
	}
	return m, nil
}

// CommandMetrics runs argv and parses its standard output as one JSON
// object of measurepoints.
func CommandMetrics(ctx context.Context, argv []string) (map[string]any, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("edge: empty metrics command")
	}
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	if err != nil {
		return nil, fmt.Errorf("edge: metrics command %q: %w", argv[0], err)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil || m == nil {
		return nil, fmt.Errorf("edge: metrics command %q must print one JSON object", argv[0])
	}
	return m, nil
}
