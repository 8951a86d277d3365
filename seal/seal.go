// Package seal encrypts secrets at rest (product and device secrets) with
// AES-256-GCM under the hub's data key. A sealed value is text, so it fits a
// TEXT column: "v1." followed by base64url(nonce | ciphertext | tag).
//
// Every value is sealed with additional authenticated data (AAD) naming the
// row it belongs to, so a ciphertext copied into another row does not open.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// KeySize is the length in bytes of a data key (AES-256).
const KeySize = 32

// prefix marks the format version of a sealed value.
const prefix = "v1."

// ErrOpen is returned by Open when a sealed value is malformed, was sealed
// under another key or AAD, or was altered. It says nothing more on purpose.
var ErrOpen = errors.New("seal: cannot open sealed value")

// Sealer seals and opens values under one data key. It is safe for
// concurrent use.
type Sealer struct {
	aead cipher.AEAD
}

// New returns a Sealer for a KeySize-byte key.
func New(key []byte) (*Sealer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("seal: key is %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return &Sealer{aead: aead}, nil
}

// Seal encrypts plain bound to aad under a fresh random nonce and returns
// the versioned text form.
func (s *Sealer) Seal(plain, aad string) (string, error) {
	ns := s.aead.NonceSize()
	buf := make([]byte, ns, ns+len(plain)+s.aead.Overhead())
	if _, err := io.ReadFull(rand.Reader, buf); err != nil {
		return "", fmt.Errorf("seal: nonce: %w", err)
	}
	buf = s.aead.Seal(buf, buf[:ns], []byte(plain), []byte(aad))
	return prefix + base64.RawURLEncoding.EncodeToString(buf), nil
}

// Open decrypts a value made by Seal with the same key and aad. Any
// mismatch or alteration yields ErrOpen.
func (s *Sealer) Open(sealed, aad string) (string, error) {
	rest, ok := strings.CutPrefix(sealed, prefix)
	if !ok {
		return "", ErrOpen
	}
	raw, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return "", ErrOpen
	}
	ns := s.aead.NonceSize()
	if len(raw) < ns+s.aead.Overhead() {
		return "", ErrOpen
	}
	plain, err := s.aead.Open(raw[ns:ns], raw[:ns], raw[ns:], []byte(aad))
	if err != nil {
		return "", ErrOpen
	}
	return string(plain), nil
}

// LoadOrCreateKey returns the data key stored at path, creating it with
// KeySize random bytes (file mode 0600, parent directory 0700) if absent.
// An existing file that group or others may access, that is not a regular
// file, or that does not hold exactly KeySize bytes is refused.
func LoadOrCreateKey(path string) ([]byte, error) {
	key, err := loadKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("seal: key directory: %w", err)
	}
	key = make([]byte, KeySize)
	if _, err := io.ReadFull(rand.Reader, key); err != nil {
		return nil, fmt.Errorf("seal: key: %w", err)
	}
	// Write to a temporary file and link it into place, so a crash never
	// leaves a short key file and two processes racing agree on one key.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".datakey-*")
	if err != nil {
		return nil, fmt.Errorf("seal: create key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("seal: create key: %w", err)
	}
	if _, err := tmp.Write(key); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("seal: write key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("seal: write key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("seal: write key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return loadKey(path) // another process won the race
		}
		return nil, fmt.Errorf("seal: create key: %w", err)
	}
	return key, nil
}

func loadKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("seal: open key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("seal: stat key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("seal: key %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("seal: key %s has mode %04o; it must not be accessible by group or others (chmod 600)", path, perm)
	}
	key, err := io.ReadAll(io.LimitReader(f, KeySize+1))
	if err != nil {
		return nil, fmt.Errorf("seal: read key: %w", err)
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("seal: key %s must hold exactly %d bytes", path, KeySize)
	}
	return key, nil
}
