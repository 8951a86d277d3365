package edge

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// State is the agent's state directory: what the device learns (its
// DeviceSecret, certificate and CA chain) and its factory ProductSecret
// until the DeviceSecret is known. The directory has mode 0700, every file
// in it 0600. The factory ProductSecret is never stored: once the
// DeviceSecret is known it is not needed again.
type State struct {
	Dir string
}

// Names of the files in a state directory.
const (
	FileDeviceSecret = "device.secret"
	FileCert         = "cert.pem"
	FileCAChain      = "ca-chain.pem"
	FileSerial       = "serial"
	FileBuffer       = "buffer.jsonl"
	FileReboot       = "reboot.request"
)

// OpenState creates dir with mode 0700 if needed and checks that it is not
// readable by others.
func OpenState(dir string) (*State, error) {
	if dir == "" {
		return nil, errors.New("edge: a state directory is required")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("edge: state %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("edge: state dir %s is open to others and cannot be tightened: %w", dir, err)
		}
	}
	return &State{Dir: dir}, nil
}

func (s *State) path(name string) string { return filepath.Join(s.Dir, name) }

// Read returns the trimmed content of a state file, "" if it is absent.
func (s *State) Read(name string) (string, error) {
	b, err := os.ReadFile(s.path(name))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// Write stores value in a state file with mode 0600, atomically.
func (s *State) Write(name, value string) error {
	return writeFileAtomic(s.path(name), []byte(value))
}

// Remove overwrites then deletes a state file; an absent file is fine.
func (s *State) Remove(name string) error { return shred(s.path(name)) }

// Certificate returns the stored device certificate, nil if none.
func (s *State) Certificate() (*x509.Certificate, error) {
	pemText, err := s.Read(FileCert)
	if err != nil || pemText == "" {
		return nil, err
	}
	block, _ := pem.Decode([]byte(pemText))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("edge: %s holds no certificate", s.path(FileCert))
	}
	return x509.ParseCertificate(block.Bytes)
}

// Wipe overwrites and removes every file the agent keeps in the directory:
// secrets, certificate, chain, buffer and markers. Keys are wiped by the
// key store.
func (s *State) Wipe() error {
	var errs []error
	for _, n := range []string{FileDeviceSecret, FileCert, FileCAChain, FileSerial, FileBuffer, FileReboot} {
		errs = append(errs, s.Remove(n))
	}
	// Temporary files of an interrupted atomic write.
	tmps, _ := filepath.Glob(filepath.Join(s.Dir, ".*.tmp*"))
	for _, t := range tmps {
		errs = append(errs, shred(t))
	}
	return errors.Join(errs...)
}

// writeFileAtomic writes data to a temporary file of mode 0600 beside path,
// syncs it and renames it over path.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	return nil
}

// shred overwrites a file with zeros before removing it, so the old bytes
// do not linger in the same blocks on simple file systems. An absent file
// is not an error.
func shred(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err == nil && fi.Size() > 0 {
		_, err = f.Write(bytes.Repeat([]byte{0}, int(fi.Size())))
		if err == nil {
			err = f.Sync()
		}
	}
	f.Close()
	if rmErr := os.Remove(path); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
		return rmErr
	}
	return err
}
