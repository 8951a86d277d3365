package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// quickStartCommands returns the shell commands of README.md's "Quick
// start" section as written: the lines of its indented code blocks, with
// backslash continuations joined.
func quickStartCommands(t *testing.T, readme string) []string {
	t.Helper()
	_, section, ok := strings.Cut(readme, "\n## Quick start\n")
	if !ok {
		t.Fatal("README.md has no ## Quick start section")
	}
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	var cmds []string
	var cur string
	for _, line := range strings.Split(section, "\n") {
		code, ok := strings.CutPrefix(line, "    ")
		if !ok {
			continue
		}
		cur += strings.TrimSpace(code)
		if strings.HasSuffix(cur, `\`) {
			cur = strings.TrimSuffix(cur, `\`) + " "
			continue
		}
		cmds = append(cmds, cur)
		cur = ""
	}
	return cmds
}

// TestReadmeQuickStart runs README.md's quick start with bash, command by
// command, as a user would: in a fresh directory next to the data/
// directory of a freshly started hub, replacing each placeholder (PRODUCTKEY,
// DEVICESECRET) with the value under that column of the table the previous
// commands printed. Only the hub's port numbers are rewritten, to the free
// ports the test's hub listens on.
func TestReadmeQuickStart(t *testing.T) {
	for _, tool := range []string{"bash", "mosquitto_pub", "openssl"} {
		needTool(t, tool)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	cmds := quickStartCommands(t, string(readme))
	joined := strings.Join(cmds, "\n")
	for _, want := range []string{"go build -o iothub ./cmd/iothub", "-p 11883", "-p 18883 --cafile data/ca/root.pem --cert", "$(./iothub sign "} {
		if !strings.Contains(joined, want) {
			t.Fatalf("the quick start lost %q:\n%s", want, joined)
		}
	}

	// The user's directory: the repository (for go build ./cmd/iothub)
	// plus the data/ directory of a hub started there.
	work := t.TempDir()
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(repo)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		switch e.Name() {
		case ".git", "data", "iothub":
			continue
		}
		if err := os.Symlink(filepath.Join(repo, e.Name()), filepath.Join(work, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	addrs, stop, _ := serveBinaryAddrs(t, buildCLI(t), filepath.Join(work, "data"))
	defer stop()
	port := func(name string) string {
		_, p, err := net.SplitHostPort(addrs[name])
		if err != nil {
			t.Fatalf("ready line: %s address %q: %v", name, addrs[name], err)
		}
		return p
	}
	ports := strings.NewReplacer("-p 11883 ", "-p "+port("mqtt")+" ", "-p 18883 ", "-p "+port("mqtts")+" ")

	values := map[string]string{} // placeholder → the value a command printed
	placeholder := regexp.MustCompile(`\b[A-Z][A-Z0-9]{5,}\b`)
	var outputs []string
	for _, c := range cmds {
		c = placeholder.ReplaceAllStringFunc(ports.Replace(c), func(w string) string {
			if v, ok := values[w]; ok {
				return v
			}
			return w
		})
		cmd := exec.Command("bash", "-e", "-o", "pipefail", "-c", c)
		cmd.Dir = work
		cmd.Env = append(os.Environ(), "IOTHUB_SERVER="+addrs["http"])
		out, err := cmd.CombinedOutput()
		t.Logf("$ %s\n%s", c, out)
		if err != nil {
			t.Fatalf("quick start command failed: %v\n$ %s\n%s", err, c, out)
		}
		outputs = append(outputs, string(out))
		// A table: upper-case headers over one row of values.
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) == 2 {
			heads, vals := strings.Fields(lines[0]), strings.Fields(lines[1])
			if len(heads) == len(vals) {
				for i, h := range heads {
					values[h] = vals[i]
				}
			}
		}
	}
	for _, k := range []string{"PRODUCTKEY", "DEVICESECRET"} {
		if values[k] == "" {
			t.Fatalf("no command printed a %s", k)
		}
	}
	// The posts were stored: the measurepoints commands show them.
	var secretDevice, certDevice bool
	for i, c := range cmds {
		if !strings.Contains(c, "device measurepoints") {
			continue
		}
		switch {
		case strings.Contains(c, "SN001") && strings.Contains(outputs[i], "21.5"):
			secretDevice = true
		case strings.Contains(c, "CAM001") && regexp.MustCompile(`temp\s+7\s`).MatchString(outputs[i]):
			certDevice = true
		}
	}
	if !secretDevice || !certDevice {
		t.Fatalf("stored measurepoints: secret device %v, certificate device %v", secretDevice, certDevice)
	}
}
