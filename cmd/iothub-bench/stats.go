package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// latencies collects durations from many goroutines.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// snapshot returns a sorted copy of the collected durations.
func (l *latencies) snapshot() []time.Duration {
	l.mu.Lock()
	s := slices.Clone(l.d)
	l.mu.Unlock()
	slices.Sort(s)
	return s
}

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted, or 0 when sorted is empty.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	if rank < 1 {
		rank = 1
	}
	if rank > len(sorted) {
		rank = len(sorted)
	}
	return sorted[rank-1]
}

// ms is a duration in milliseconds, rounded to microseconds.
func ms(d time.Duration) float64 {
	return math.Round(float64(d)/1e3) / 1e3
}

// Figure is one measured number of a scenario.
type Figure struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	// Higher tells whether a higher value is better.
	Higher bool `json:"higher"`
}

// Result is one scenario run: one JSON line on standard output.
type Result struct {
	Broker   string            `json:"broker"`
	Scenario string            `json:"scenario"`
	Label    string            `json:"label"`
	Params   map[string]any    `json:"params,omitempty"`
	Figures  []Figure          `json:"figures"`
	Errors   int               `json:"errors"`
	Notes    map[string]string `json:"notes,omitempty"`
}

func (r *Result) add(name string, v float64, unit string, higher bool) {
	r.Figures = append(r.Figures, Figure{Name: name, Value: math.Round(v*1000) / 1000, Unit: unit, Higher: higher})
}

// addLatency adds p50, p99 and max of sorted (in ms) under prefix.
func (r *Result) addLatency(prefix string, sorted []time.Duration) {
	r.add(prefix+" p50", ms(percentile(sorted, 50)), "ms", false)
	r.add(prefix+" p99", ms(percentile(sorted, 99)), "ms", false)
	r.add(prefix+" max", ms(percentile(sorted, 100)), "ms", false)
}

func (r *Result) write(w io.Writer) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// readResults reads JSON result lines; other lines are skipped.
func readResults(path string) ([]Result, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Result
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var r Result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, r)
	}
	return out, sc.Err()
}

// table writes a Markdown table comparing figures of a (left) and b
// (right) matched by scenario label and figure name, in a's order. ratio
// is a/b; the last column tells which side is better.
func table(w io.Writer, aName, bName string, a, b []Result) {
	type key struct{ label, name string }
	right := map[key]Figure{}
	errs := map[string]int{}
	for _, r := range b {
		for _, f := range r.Figures {
			right[key{r.Label, f.Name}] = f
		}
		errs[r.Label] += r.Errors
	}
	fmt.Fprintf(w, "| figure | %s | %s | ratio %s/%s | better |\n|---|---:|---:|---:|---|\n", aName, bName, aName, bName)
	for _, r := range a {
		for _, f := range r.Figures {
			g, ok := right[key{r.Label, f.Name}]
			rv, ratio, better := "n/a", "n/a", ""
			if ok {
				rv = num(g.Value)
				if g.Value != 0 {
					ratio = fmt.Sprintf("%.2f", f.Value/g.Value)
				}
				switch {
				case f.Value == g.Value:
					better = "="
				case (f.Value > g.Value) == f.Higher:
					better = aName
				default:
					better = bName
				}
			}
			fmt.Fprintf(w, "| %s: %s (%s) | %s | %s | %s | %s |\n", r.Label, f.Name, f.Unit, num(f.Value), rv, ratio, better)
		}
		if r.Errors > 0 || errs[r.Label] > 0 {
			fmt.Fprintf(w, "| %s: errors | %d | %d | | |\n", r.Label, r.Errors, errs[r.Label])
		}
	}
}

// num prints a figure without needless decimals.
func num(v float64) string {
	switch {
	case v == math.Trunc(v) || math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// pacer spaces one device's messages so that n devices together send
// rate messages per second (0: no spacing) until deadline.
type pacer struct {
	start, deadline time.Time
	interval        time.Duration
}

func newPacer(start, deadline time.Time, n int, rate float64) pacer {
	p := pacer{start: start, deadline: deadline}
	if rate > 0 {
		p.interval = time.Duration(float64(n) / rate * float64(time.Second))
	}
	return p
}

// next waits for the k-th message's turn and reports whether it is
// before the deadline.
func (p pacer) next(k int) bool {
	now := time.Now()
	if !now.Before(p.deadline) {
		return false
	}
	if p.interval > 0 {
		if wait := p.start.Add(time.Duration(k) * p.interval).Sub(now); wait > 0 {
			time.Sleep(wait)
		}
	}
	return true
}
