package edge

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"golang.org/x/crypto/scrypt"
)

// KeyType names the kind of key pair the agent creates.
type KeyType string

// Supported key types: the two the hub accepts in a CSR.
const (
	RSA2048 KeyType = "rsa2048"
	P256    KeyType = "p256"
)

// Valid reports whether t is a supported key type.
func (t KeyType) Valid() bool { return t == RSA2048 || t == P256 }

// ErrNoKey is returned by KeyStore.Open when the slot holds no key.
var ErrNoKey = errors.New("edge: no key in the key store")

// KeyStore keeps the device's private keys. Each key lives in a named
// slot ("current", "next" during renewal). A key store hands out a
// crypto.Signer; whether the private key can be read back depends on the
// backend (the TPM backend never lets it out).
type KeyStore interface {
	// Create makes a fresh key pair of type t in slot, replacing any key there.
	Create(slot string, t KeyType) (crypto.Signer, error)
	// Open returns the signer of the key in slot, or ErrNoKey.
	Open(slot string) (crypto.Signer, error)
	// Rename moves the key in slot from to slot to, replacing what was there.
	Rename(from, to string) error
	// Destroy deletes every key the store holds.
	Destroy() error
	// Close releases the store's resources (a TPM connection).
	Close() error
}

var slotRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,15}$`)

func checkSlot(slot string) error {
	if !slotRE.MatchString(slot) {
		return fmt.Errorf("edge: bad key slot name %q", slot)
	}
	return nil
}

// FileKeyStore keeps PKCS#8 PEM private keys in files of mode 0600 under
// Dir. With a Passphrase the key is sealed: AES-256-GCM under a key
// derived by scrypt, in a PEM block of type "IOTEDGE SEALED PRIVATE KEY".
type FileKeyStore struct {
	Dir        string
	Passphrase []byte
}

const (
	pemPlainKey  = "PRIVATE KEY"
	pemSealedKey = "IOTEDGE SEALED PRIVATE KEY"
	// scrypt cost: N=2^15, r=8, p=1 (about 32 MiB, tens of ms).
	scryptN = 1 << 15
)

func (s *FileKeyStore) path(slot string) string {
	return filepath.Join(s.Dir, "key-"+slot+".pem")
}

// Create implements KeyStore.
func (s *FileKeyStore) Create(slot string, t KeyType) (crypto.Signer, error) {
	if err := checkSlot(slot); err != nil {
		return nil, err
	}
	var key crypto.Signer
	var err error
	switch t {
	case RSA2048:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case P256:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		return nil, fmt.Errorf("edge: unsupported key type %q (want rsa2048 or p256)", t)
	}
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	block := &pem.Block{Type: pemPlainKey, Bytes: der}
	if len(s.Passphrase) > 0 {
		if block, err = sealKey(der, s.Passphrase); err != nil {
			return nil, err
		}
	}
	if err := writeFileAtomic(s.path(slot), pem.EncodeToMemory(block)); err != nil {
		return nil, err
	}
	return key, nil
}

// Open implements KeyStore.
func (s *FileKeyStore) Open(slot string) (crypto.Signer, error) {
	if err := checkSlot(slot); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(s.path(slot))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoKey
	}
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("edge: %s holds no PEM block", s.path(slot))
	}
	der := block.Bytes
	switch block.Type {
	case pemPlainKey:
		if len(s.Passphrase) > 0 {
			return nil, fmt.Errorf("edge: %s is not sealed but a passphrase was given", s.path(slot))
		}
	case pemSealedKey:
		if len(s.Passphrase) == 0 {
			return nil, fmt.Errorf("edge: %s is sealed: a passphrase is needed", s.path(slot))
		}
		if der, err = unsealKey(block, s.Passphrase); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("edge: %s holds a %q block, not a private key", s.path(slot), block.Type)
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("edge: parse key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("edge: key of type %T cannot sign", key)
	}
	return signer, nil
}

// Rename implements KeyStore.
func (s *FileKeyStore) Rename(from, to string) error {
	if err := checkSlot(from); err != nil {
		return err
	}
	if err := checkSlot(to); err != nil {
		return err
	}
	return os.Rename(s.path(from), s.path(to))
}

// Destroy implements KeyStore: it overwrites then removes every key file.
func (s *FileKeyStore) Destroy() error {
	files, err := filepath.Glob(filepath.Join(s.Dir, "key-*.pem"))
	if err != nil {
		return err
	}
	var errs []error
	for _, f := range files {
		errs = append(errs, shred(f))
	}
	return errors.Join(errs...)
}

// Close implements KeyStore; a file store holds nothing open.
func (s *FileKeyStore) Close() error { return nil }

func sealKey(der, pass []byte) (*pem.Block, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	aead, err := passAEAD(pass, salt)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	body := append(append(append([]byte(nil), salt...), nonce...), aead.Seal(nil, nonce, der, []byte(pemSealedKey))...)
	return &pem.Block{Type: pemSealedKey, Headers: map[string]string{"KDF": "scrypt-32768-8-1", "Cipher": "AES-256-GCM"}, Bytes: body}, nil
}

func unsealKey(block *pem.Block, pass []byte) ([]byte, error) {
	if block.Headers["KDF"] != "scrypt-32768-8-1" || block.Headers["Cipher"] != "AES-256-GCM" {
		return nil, errors.New("edge: sealed key uses an unknown KDF or cipher")
	}
	if len(block.Bytes) < 16+12+16 {
		return nil, errors.New("edge: sealed key is truncated")
	}
	salt := block.Bytes[:16]
	aead, err := passAEAD(pass, salt)
	if err != nil {
		return nil, err
	}
	nonce := block.Bytes[16 : 16+aead.NonceSize()]
	der, err := aead.Open(nil, nonce, block.Bytes[16+aead.NonceSize():], []byte(pemSealedKey))
	if err != nil {
		return nil, errors.New("edge: wrong passphrase or damaged sealed key")
	}
	return der, nil
}

func passAEAD(pass, salt []byte) (cipher.AEAD, error) {
	k, err := scrypt.Key(pass, salt, scryptN, 8, 1, 32)
	if err != nil {
		return nil, err
	}
	b, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}
