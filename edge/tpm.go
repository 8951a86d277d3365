package edge

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/google/go-tpm/tpm2/transport/tcp"
)

// TPMKeyStore keeps keys inside a TPM 2.0. A key is created by the TPM
// under the owner hierarchy's ECC P-256 storage primary (re-derived from
// the TPM's seed on each use, never persisted) and only its public part and
// its TPM-wrapped private part (readable by this TPM alone) are written to
// Dir. Every signature is made by the TPM; every transient handle is
// flushed after use, so no resource manager is needed.
type TPMKeyStore struct {
	Dir string

	mu  sync.Mutex
	tpm transport.TPMCloser
}

// OpenTPM opens a TPM character device such as /dev/tpmrm0 or /dev/tpm0.
func OpenTPM(dir, device string) (*TPMKeyStore, error) {
	t, err := linuxtpm.Open(device)
	if err != nil {
		return nil, fmt.Errorf("edge: open TPM %s: %w", device, err)
	}
	return &TPMKeyStore{Dir: dir, tpm: t}, nil
}

// OpenSWTPM connects to a TPM simulator (swtpm, or the reference
// simulator) on addr, its control port being the next port.
func OpenSWTPM(dir, addr, ctrlAddr string) (*TPMKeyStore, error) {
	t, err := tcp.Open(tcp.Config{CommandAddress: addr, PlatformAddress: ctrlAddr})
	if err != nil {
		return nil, fmt.Errorf("edge: connect to TPM simulator at %s: %w", addr, err)
	}
	return &TPMKeyStore{Dir: dir, tpm: t}, nil
}

func (s *TPMKeyStore) files(slot string) (pub, priv string) {
	base := filepath.Join(s.Dir, "tpmkey-"+slot)
	return base + ".pub", base + ".priv"
}

// srk creates the storage primary and returns its handle and name. The
// caller flushes it.
func (s *TPMKeyStore) srk() (tpm2.NamedHandle, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(s.tpm)
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("edge: TPM create primary: %w", err)
	}
	return tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, nil
}

func (s *TPMKeyStore) flush(h tpm2.TPMHandle) {
	tpm2.FlushContext{FlushHandle: h}.Execute(s.tpm)
}

func keyTemplate(t KeyType) (tpm2.TPMTPublic, error) {
	attrs := tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		SignEncrypt:         true,
		NoDA:                true,
	}
	switch t {
	case RSA2048:
		return tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgRSA,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: attrs,
			// A null scheme lets each Sign choose PKCS#1 v1.5 or PSS:
			// TLS 1.3 needs PSS, X.509 CSRs use v1.5.
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
				Scheme:  tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
				KeyBits: 2048,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}),
		}, nil
	case P256:
		return tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgECC,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: attrs,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				Scheme: tpm2.TPMTECCScheme{
					Scheme:  tpm2.TPMAlgECDSA,
					Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
				},
				CurveID: tpm2.TPMECCNistP256,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
				X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
				Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
			}),
		}, nil
	}
	return tpm2.TPMTPublic{}, fmt.Errorf("edge: unsupported key type %q (want rsa2048 or p256)", t)
}

// Create implements KeyStore: the TPM generates the key pair.
func (s *TPMKeyStore) Create(slot string, t KeyType) (crypto.Signer, error) {
	if err := checkSlot(slot); err != nil {
		return nil, err
	}
	tmpl, err := keyTemplate(t)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	parent, err := s.srk()
	if err != nil {
		return nil, err
	}
	defer s.flush(parent.Handle)
	rsp, err := tpm2.Create{
		ParentHandle: parent,
		InPublic:     tpm2.New2B(tmpl),
	}.Execute(s.tpm)
	if err != nil {
		return nil, fmt.Errorf("edge: TPM create key: %w", err)
	}
	pubFile, privFile := s.files(slot)
	if err := writeFileAtomic(privFile, tpm2.Marshal(rsp.OutPrivate)); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(pubFile, tpm2.Marshal(rsp.OutPublic)); err != nil {
		return nil, err
	}
	return s.signer(rsp.OutPublic, rsp.OutPrivate)
}

// Open implements KeyStore.
func (s *TPMKeyStore) Open(slot string) (crypto.Signer, error) {
	if err := checkSlot(slot); err != nil {
		return nil, err
	}
	pubFile, privFile := s.files(slot)
	pubBytes, err := os.ReadFile(pubFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoKey
	}
	if err != nil {
		return nil, err
	}
	privBytes, err := os.ReadFile(privFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoKey
	}
	if err != nil {
		return nil, err
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](pubBytes)
	if err != nil {
		return nil, fmt.Errorf("edge: %s: %w", pubFile, err)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](privBytes)
	if err != nil {
		return nil, fmt.Errorf("edge: %s: %w", privFile, err)
	}
	return s.signer(*pub, *priv)
}

func (s *TPMKeyStore) signer(pub tpm2.TPM2BPublic, priv tpm2.TPM2BPrivate) (crypto.Signer, error) {
	contents, err := pub.Contents()
	if err != nil {
		return nil, err
	}
	pk, err := tpm2.Pub(*contents)
	if err != nil {
		return nil, fmt.Errorf("edge: TPM public key: %w", err)
	}
	return &tpmSigner{store: s, pub: pub, priv: priv, public: pk}, nil
}

// Rename implements KeyStore.
func (s *TPMKeyStore) Rename(from, to string) error {
	if err := checkSlot(from); err != nil {
		return err
	}
	if err := checkSlot(to); err != nil {
		return err
	}
	fp, fs := s.files(from)
	tp, ts := s.files(to)
	if err := os.Rename(fs, ts); err != nil {
		return err
	}
	return os.Rename(fp, tp)
}

// Destroy implements KeyStore: it removes the wrapped key blobs; without
// them the TPM cannot load the keys again.
func (s *TPMKeyStore) Destroy() error {
	files, err := filepath.Glob(filepath.Join(s.Dir, "tpmkey-*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, f := range files {
		errs = append(errs, shred(f))
	}
	return errors.Join(errs...)
}

// Close implements KeyStore.
func (s *TPMKeyStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tpm == nil {
		return nil
	}
	err := s.tpm.Close()
	s.tpm = nil
	return err
}

// tpmSigner signs through the TPM with a key it loads for each signature.
type tpmSigner struct {
	store  *TPMKeyStore
	pub    tpm2.TPM2BPublic
	priv   tpm2.TPM2BPrivate
	public crypto.PublicKey
}

func (k *tpmSigner) Public() crypto.PublicKey { return k.public }

// Sign signs digest, a SHA-256 hash, with PKCS#1 v1.5, PSS (salt length
// equal to the hash, as TLS 1.3 requires) or ECDSA per the key and opts.
func (k *tpmSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts.HashFunc() != crypto.SHA256 || len(digest) != 32 {
		return nil, fmt.Errorf("edge: TPM signer supports SHA-256 digests only, got %v", opts.HashFunc())
	}
	var scheme tpm2.TPMTSigScheme
	switch k.public.(type) {
	case *rsa.PublicKey:
		alg := tpm2.TPMAlgRSASSA
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			if pss.SaltLength != rsa.PSSSaltLengthEqualsHash && pss.SaltLength != 32 && pss.SaltLength != rsa.PSSSaltLengthAuto {
				return nil, fmt.Errorf("edge: TPM signer cannot make PSS with salt length %d", pss.SaltLength)
			}
			alg = tpm2.TPMAlgRSAPSS
		}
		scheme = tpm2.TPMTSigScheme{Scheme: alg, Details: tpm2.NewTPMUSigScheme(alg, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})}
	case *ecdsa.PublicKey:
		scheme = tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})}
	default:
		return nil, fmt.Errorf("edge: TPM key of type %T", k.public)
	}

	s := k.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tpm == nil {
		return nil, errors.New("edge: TPM key store is closed")
	}
	parent, err := s.srk()
	if err != nil {
		return nil, err
	}
	loaded, err := tpm2.Load{ParentHandle: parent, InPrivate: k.priv, InPublic: k.pub}.Execute(s.tpm)
	s.flush(parent.Handle)
	if err != nil {
		return nil, fmt.Errorf("edge: TPM load key: %w", err)
	}
	defer s.flush(loaded.ObjectHandle)

	cmd := tpm2.Sign{
		KeyHandle:  tpm2.NamedHandle{Handle: loaded.ObjectHandle, Name: loaded.Name},
		Digest:     tpm2.TPM2BDigest{Buffer: digest},
		InScheme:   scheme,
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck},
	}
	var rsp *tpm2.SignResponse
	for attempt := 0; ; attempt++ {
		rsp, err = cmd.Execute(s.tpm)
		// A TPM may ask to retry (swtpm does on its first ECDSA signature).
		if err != nil && (errors.Is(err, tpm2.TPMRCRetry) || errors.Is(err, tpm2.TPMRCYielded) || errors.Is(err, tpm2.TPMRCTesting)) && attempt < 10 {
			time.Sleep(time.Duration(attempt+1) * 5 * time.Millisecond)
			continue
		}
		break
	}
	if err != nil {
		return nil, fmt.Errorf("edge: TPM sign: %w", err)
	}
	switch scheme.Scheme {
	case tpm2.TPMAlgRSASSA:
		sig, err := rsp.Signature.Signature.RSASSA()
		if err != nil {
			return nil, err
		}
		return sig.Sig.Buffer, nil
	case tpm2.TPMAlgRSAPSS:
		sig, err := rsp.Signature.Signature.RSAPSS()
		if err != nil {
			return nil, err
		}
		return sig.Sig.Buffer, nil
	default:
		sig, err := rsp.Signature.Signature.ECDSA()
		if err != nil {
			return nil, err
		}
		return asn1.Marshal(struct{ R, S *big.Int }{
			new(big.Int).SetBytes(sig.SignatureR.Buffer),
			new(big.Int).SetBytes(sig.SignatureS.Buffer),
		})
	}
}
