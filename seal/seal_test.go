package seal

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func newSealer(t *testing.T) *Sealer {
	t.Helper()
	key, err := LoadOrCreateKey(filepath.Join(t.TempDir(), "keys", "data.key"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSealRoundTrip(t *testing.T) {
	s := newSealer(t)
	for _, plain := range []string{"", "x", "s3cr3t-device-secret", strings.Repeat("ä", 500)} {
		sealed, err := s.Seal(plain, "device\x00pk\x00dk")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(sealed, "v1.") {
			t.Fatalf("sealed %q lacks version prefix", sealed)
		}
		if len(plain) > 4 && strings.Contains(sealed, plain) {
			t.Fatalf("sealed value contains the clear text")
		}
		got, err := s.Open(sealed, "device\x00pk\x00dk")
		if err != nil {
			t.Fatal(err)
		}
		if got != plain {
			t.Fatalf("Open = %q, want %q", got, plain)
		}
	}
}

func TestSealFreshNonce(t *testing.T) {
	s := newSealer(t)
	a, _ := s.Seal("same", "aad")
	b, _ := s.Seal("same", "aad")
	if a == b {
		t.Fatal("two seals of the same value are identical: nonce reused")
	}
}

func TestOpenRefuses(t *testing.T) {
	s := newSealer(t)
	other := newSealer(t)
	sealed, err := s.Seal("device-secret", "device\x00pk\x00dk1")
	if err != nil {
		t.Fatal(err)
	}
	body := sealed[len("v1."):]
	flip := func(i int) string {
		b := []byte(body)
		// swap one base64url character for another valid one
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return "v1." + string(b)
	}
	cases := map[string]struct {
		s      *Sealer
		sealed string
		aad    string
	}{
		"wrong aad (other row)": {s, sealed, "device\x00pk\x00dk2"},
		"empty aad":             {s, sealed, ""},
		"wrong key":             {other, sealed, "device\x00pk\x00dk1"},
		"tampered nonce":        {s, flip(0), "device\x00pk\x00dk1"},
		"tampered ciphertext":   {s, flip(20), "device\x00pk\x00dk1"},
		"tampered tag":          {s, flip(len(body) - 2), "device\x00pk\x00dk1"},
		"truncated":             {s, sealed[:len(sealed)-4], "device\x00pk\x00dk1"},
		"no prefix":             {s, body, "device\x00pk\x00dk1"},
		"unknown version":       {s, "v2." + body, "device\x00pk\x00dk1"},
		"bad base64":            {s, "v1.!!!!", "device\x00pk\x00dk1"},
		"too short":             {s, "v1.AAAA", "device\x00pk\x00dk1"},
		"empty":                 {s, "", "device\x00pk\x00dk1"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := c.s.Open(c.sealed, c.aad)
			if !errors.Is(err, ErrOpen) {
				t.Fatalf("Open = %q, %v; want ErrOpen", got, err)
			}
			if got != "" {
				t.Fatalf("Open returned text %q on failure", got)
			}
		})
	}
}

func TestNewKeySize(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33} {
		if _, err := New(make([]byte, n)); err == nil {
			t.Fatalf("New accepted a %d-byte key", n)
		}
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, "data.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(k1) != KeySize || bytes.Equal(k1, make([]byte, KeySize)) {
		t.Fatalf("key = %x", k1)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %o, want 600", fi.Mode().Perm())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Fatalf("key dir mode %o, want 700", di.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("key dir holds %d entries, want only the key", len(entries))
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k1, k2) {
		t.Fatal("second load returned another key")
	}
}

func TestLoadOrCreateKeyRefuses(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := bytes.Repeat([]byte{7}, KeySize)
	cases := map[string]string{
		"group readable": write("g.key", good, 0o640),
		"world readable": write("w.key", good, 0o604),
		"group writable": write("gw.key", good, 0o620),
		"short":          write("short.key", good[:31], 0o600),
		"long":           write("long.key", append(good, '\n'), 0o600),
		"empty":          write("empty.key", nil, 0o600),
		"directory":      dir,
	}
	for name, p := range cases {
		t.Run(name, func(t *testing.T) {
			before, _ := os.ReadFile(p)
			if k, err := LoadOrCreateKey(p); err == nil {
				t.Fatalf("accepted %s key file: %x", name, k)
			}
			after, _ := os.ReadFile(p)
			if !bytes.Equal(before, after) {
				t.Fatal("refused key file was changed")
			}
		})
	}
}
