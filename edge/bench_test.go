package edge

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"path/filepath"
	"testing"
)

func benchSign(b *testing.B, key crypto.Signer) {
	digest := sha256.Sum256([]byte("handshake transcript"))
	b.ResetTimer()
	for b.Loop() {
		if _, err := key.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSign measures one signature (what a TLS handshake costs the
// device) with a file key and with a key inside swtpm.
func BenchmarkSign(b *testing.B) {
	for _, kt := range []KeyType{P256, RSA2048} {
		b.Run("file/"+string(kt), func(b *testing.B) {
			key, err := (&FileKeyStore{Dir: b.TempDir()}).Create("current", kt)
			if err != nil {
				b.Fatal(err)
			}
			benchSign(b, key)
		})
	}
	cmdAddr, ctrlAddr := startSWTPM(b)
	for _, kt := range []KeyType{P256, RSA2048} {
		b.Run("tpm/"+string(kt), func(b *testing.B) {
			ks, err := OpenSWTPM(b.TempDir(), cmdAddr, ctrlAddr)
			if err != nil {
				b.Fatal(err)
			}
			defer ks.Close()
			key, err := ks.Create("current", kt)
			if err != nil {
				b.Fatal(err)
			}
			benchSign(b, key)
		})
	}
}

// BenchmarkSealedKeyOpen measures opening a passphrase-sealed key (scrypt).
func BenchmarkSealedKeyOpen(b *testing.B) {
	ks := &FileKeyStore{Dir: b.TempDir(), Passphrase: []byte("pass")}
	if _, err := ks.Create("current", P256); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := ks.Open("current"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBufferAppend measures buffering one post while offline.
func BenchmarkBufferAppend(b *testing.B) {
	buf := &Buffer{Path: filepath.Join(b.TempDir(), "buf.jsonl"), MaxBytes: 1 << 20}
	r := Record{Measurepoints: map[string]any{"temp": 21.5, "load1": 0.42, "uptime": 12345.6}, Time: 1700000000000}
	for b.Loop() {
		if err := buf.Append(r); err != nil {
			b.Fatal(err)
		}
	}
}
