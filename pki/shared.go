package pki

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"
)

// sharedTimeout bounds one exchange with the shared CA file store.
const sharedTimeout = 30 * time.Second

// isShared reports whether a CA directory file is the cluster's (CA
// certificates and keys, the generations record) rather than the node's
// own (server certificates, CRL number).
func isShared(name string) bool {
	if name == generationsFile {
		return true
	}
	for _, p := range []string{"root", "issuing", "cross-"} {
		if strings.HasPrefix(name, p) && (strings.HasSuffix(name, ".pem") || strings.HasSuffix(name, ".key")) {
			return true
		}
	}
	return false
}

// pull copies the cluster's CA files into the directory: missing files are
// written, the generations record is replaced; a CA file that differs
// from the cluster's is an error, never overwritten.
func (a *Authority) pull() error {
	if a.shared == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), sharedTimeout)
	defer cancel()
	files, err := a.shared.CAFiles(ctx)
	if err != nil {
		return fmt.Errorf("pki: read the cluster's CA files: %w", err)
	}
	for name, content := range files {
		if !isShared(name) || strings.ContainsAny(name, `/\`) {
			continue
		}
		local, err := os.ReadFile(a.path(name))
		switch {
		case err == nil && bytes.Equal(local, content):
			continue
		case err == nil && name != generationsFile:
			return fmt.Errorf("pki: %s differs from the cluster's; this node holds another CA", a.path(name))
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("pki: %w", err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".key") || name == generationsFile {
			mode = 0o600
		}
		if err := writeFileAtomic(a.path(name), content, mode); err != nil {
			return err
		}
	}
	return nil
}

// push writes the named files of the directory to the cluster's store.
func (a *Authority) push(names ...string) error {
	if a.shared == nil {
		return nil
	}
	files := map[string][]byte{}
	for _, n := range names {
		b, err := os.ReadFile(a.path(n))
		if err != nil {
			return fmt.Errorf("pki: %w", err)
		}
		files[n] = b
	}
	ctx, cancel := context.WithTimeout(context.Background(), sharedTimeout)
	defer cancel()
	if err := a.shared.PutCAFiles(ctx, files); err != nil {
		return fmt.Errorf("pki: share CA files: %w", err)
	}
	return nil
}

// sharedNames lists the shared files of gens.
func sharedNames(gens []*caGen) []string {
	names := []string{generationsFile}
	for _, g := range gens {
		names = append(names, g.KeyFile, g.CertFile)
		if g.CrossFile != "" {
			names = append(names, g.CrossFile)
		}
	}
	return names
}
