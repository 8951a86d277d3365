package edge

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func checkCSR(t *testing.T, key crypto.Signer) {
	t.Helper()
	csrPEM, err := NewCSR(key, "pk1", "sn-001")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode([]byte(csrPEM))
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		t.Fatalf("CSR is not a PEM CERTIFICATE REQUEST: %q", csrPEM)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("CSR signature does not verify: %v", err)
	}
	if csr.Subject.CommonName != "sn-001" || len(csr.Subject.Organization) != 1 || csr.Subject.Organization[0] != "pk1" {
		t.Fatalf("CSR subject = %v", csr.Subject)
	}
}

// checkSigner signs a digest with every scheme TLS may ask for and
// verifies the result with the public key.
func checkSigner(t *testing.T, key crypto.Signer) {
	t.Helper()
	digest := sha256.Sum256([]byte("hello"))
	switch pub := key.Public().(type) {
	case *rsa.PublicKey:
		sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
			t.Fatalf("PKCS#1 v1.5: %v", err)
		}
		pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
		sig, err = key.Sign(rand.Reader, digest[:], pss)
		if err != nil {
			t.Fatal(err)
		}
		if err := rsa.VerifyPSS(pub, crypto.SHA256, digest[:], sig, pss); err != nil {
			t.Fatalf("PSS: %v", err)
		}
	case *ecdsa.PublicKey:
		sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		if !ecdsa.VerifyASN1(pub, digest[:], sig) {
			t.Fatal("ECDSA signature does not verify")
		}
	default:
		t.Fatalf("unexpected key type %T", pub)
	}
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestFileKeyStore(t *testing.T) {
	for _, kt := range []KeyType{P256, RSA2048} {
		for _, sealed := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/sealed=%v", kt, sealed), func(t *testing.T) {
				dir := t.TempDir()
				ks := &FileKeyStore{Dir: dir}
				if sealed {
					ks.Passphrase = []byte("correct horse")
				}
				if _, err := ks.Open("current"); !errors.Is(err, ErrNoKey) {
					t.Fatalf("Open on empty store: %v, want ErrNoKey", err)
				}
				key, err := ks.Create("current", kt)
				if err != nil {
					t.Fatal(err)
				}
				path := filepath.Join(dir, "key-current.pem")
				if m := fileMode(t, path); m != 0o600 {
					t.Fatalf("key file mode %v, want 0600", m)
				}
				raw, _ := os.ReadFile(path)
				if sealed == strings.Contains(string(raw), "BEGIN PRIVATE KEY") {
					t.Fatalf("sealed=%v but file is:\n%s", sealed, raw)
				}
				again, err := ks.Open("current")
				if err != nil {
					t.Fatal(err)
				}
				if !again.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
					t.Fatal("reopened key differs")
				}
				checkSigner(t, again)
				checkCSR(t, again)
				if sealed {
					wrong := &FileKeyStore{Dir: dir, Passphrase: []byte("wrong")}
					if _, err := wrong.Open("current"); err == nil || !strings.Contains(err.Error(), "passphrase") {
						t.Fatalf("wrong passphrase: %v", err)
					}
					if _, err := (&FileKeyStore{Dir: dir}).Open("current"); err == nil {
						t.Fatal("sealed key opened without passphrase")
					}
				}
				if err := ks.Rename("current", "old"); err != nil {
					t.Fatal(err)
				}
				if _, err := ks.Open("current"); !errors.Is(err, ErrNoKey) {
					t.Fatalf("after rename: %v", err)
				}
				if _, err := ks.Open("old"); err != nil {
					t.Fatal(err)
				}
				if err := ks.Destroy(); err != nil {
					t.Fatal(err)
				}
				left, _ := filepath.Glob(filepath.Join(dir, "*"))
				if len(left) != 0 {
					t.Fatalf("files left after Destroy: %v", left)
				}
			})
		}
	}
}

func TestFileKeyStoreBadInput(t *testing.T) {
	ks := &FileKeyStore{Dir: t.TempDir()}
	if _, err := ks.Create("current", "dsa1024"); err == nil {
		t.Fatal("unsupported key type accepted")
	}
	if _, err := ks.Create("../x", P256); err == nil {
		t.Fatal("slot with a path accepted")
	}
	left, _ := filepath.Glob(filepath.Join(ks.Dir, "*"))
	if len(left) != 0 {
		t.Fatalf("bad input left files: %v", left)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		// swtpm needs p and p+1.
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1))
		if err == nil {
			l2.Close()
			return p
		}
	}
}

// startSWTPM starts a swtpm simulator on 127.0.0.1 for the test and returns
// its command and control addresses; the test is skipped if swtpm is not
// installed.
func startSWTPM(t testing.TB) (cmdAddr, ctrlAddr string) {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		t.Skip("swtpm is not installed")
	}
	dir := t.TempDir()
	p := freePort(t)
	cmd := exec.Command(bin, "socket", "--tpm2",
		"--tpmstate", "dir="+dir,
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", p),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", p+1),
		"--flags", "not-need-init,startup-clear")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	cmdAddr = fmt.Sprintf("127.0.0.1:%d", p)
	ctrlAddr = fmt.Sprintf("127.0.0.1:%d", p+1)
	for i := 0; i < 200; i++ {
		c, err := net.Dial("tcp", ctrlAddr)
		if err == nil {
			c.Close()
			return cmdAddr, ctrlAddr
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("swtpm did not start")
	return
}

func TestTPMKeyStore(t *testing.T) {
	cmdAddr, ctrlAddr := startSWTPM(t)
	for _, kt := range []KeyType{P256, RSA2048} {
		t.Run(string(kt), func(t *testing.T) {
			dir := t.TempDir()
			ks, err := OpenSWTPM(dir, cmdAddr, ctrlAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer ks.Close()
			if _, err := ks.Open("current"); !errors.Is(err, ErrNoKey) {
				t.Fatalf("Open on empty store: %v", err)
			}
			key, err := ks.Create("current", kt)
			if err != nil {
				t.Fatal(err)
			}
			checkSigner(t, key)
			checkCSR(t, key)
			for _, f := range []string{"tpmkey-current.pub", "tpmkey-current.priv"} {
				if m := fileMode(t, filepath.Join(dir, f)); m != 0o600 {
					t.Fatalf("%s mode %v", f, m)
				}
			}
			// The wrapped blob is not a usable private key outside the TPM.
			blob, _ := os.ReadFile(filepath.Join(dir, "tpmkey-current.priv"))
			if _, err := x509.ParsePKCS8PrivateKey(blob); err == nil {
				t.Fatal("TPM blob parses as a plain private key")
			}
			again, err := ks.Open("current")
			if err != nil {
				t.Fatal(err)
			}
			if !again.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
				t.Fatal("reopened TPM key differs")
			}
			checkSigner(t, again)
			if err := ks.Rename("current", "old"); err != nil {
				t.Fatal(err)
			}
			if _, err := ks.Open("old"); err != nil {
				t.Fatal(err)
			}
			if err := ks.Destroy(); err != nil {
				t.Fatal(err)
			}
			if _, err := ks.Open("old"); !errors.Is(err, ErrNoKey) {
				t.Fatalf("after Destroy: %v", err)
			}
			left, _ := filepath.Glob(filepath.Join(dir, "*"))
			if len(left) != 0 {
				t.Fatalf("files left after Destroy: %v", left)
			}
		})
	}
}
