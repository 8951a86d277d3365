// Package sign implements the EnOS device signature: the MQTT CONNECT
// password, the clientId and username formats, and the same sorted
// key+value scheme used by the HTTP device endpoints. The hub, the edge
// agent, the bench tool and the tests all use this one implementation.
package sign

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"hash"
	"sort"
	"strings"
)

// Method is a signmethod as sent in the clientId.
type Method string

// Sign methods. The "hmac" names are, in EnOS, plain hashes too.
const (
	SHA256     Method = "sha256"
	HMACSHA256 Method = "hmacsha256"
	SHA1       Method = "sha1"
	HMACSHA1   Method = "hmacsha1"
	MD5        Method = "md5"
	HMACMD5    Method = "hmacmd5"
)

// ErrUnknownMethod is returned for a signmethod the hub does not accept.
var ErrUnknownMethod = errors.New("sign: unknown signmethod")

// Valid reports whether the hub knows m (in any case).
func (m Method) Valid() bool {
	_, err := newHash(m)
	return err == nil
}

func newHash(m Method) (func() hash.Hash, error) {
	switch Method(strings.ToLower(string(m))) {
	case SHA256, HMACSHA256:
		return sha256.New, nil
	case SHA1, HMACSHA1:
		return sha1.New, nil
	case MD5, HMACMD5:
		return md5.New, nil
	}
	return nil, ErrUnknownMethod
}

// Pair is one key and value of the signed content.
type Pair struct{ Key, Value string }

// Content builds the signed text: pairs sorted by key, each key then value
// with no separators, then the secret appended.
func Content(pairs []Pair, secret string) string {
	sorted := append([]Pair(nil), pairs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Key < sorted[j].Key })
	var b strings.Builder
	for _, p := range sorted {
		b.WriteString(p.Key)
		b.WriteString(p.Value)
	}
	b.WriteString(secret)
	return b.String()
}

// Compute returns the lower-case hex signature of pairs with secret.
func Compute(m Method, pairs []Pair, secret string) (string, error) {
	h, err := newHash(m)
	if err != nil {
		return "", err
	}
	d := h()
	d.Write([]byte(Content(pairs, secret)))
	return hex.EncodeToString(d.Sum(nil)), nil
}

// Verify reports whether got (hex, either case) is the signature of pairs
// with secret. The comparison takes constant time. For hmacsha1 a real
// HMAC-SHA1 keyed with the secret is accepted too, as one SDK sends it.
func Verify(m Method, pairs []Pair, secret, got string) bool {
	want, err := Compute(m, pairs, secret)
	if err != nil {
		return false
	}
	if equalHex(want, got) {
		return true
	}
	if Method(strings.ToLower(string(m))) == HMACSHA1 {
		mac := hmac.New(sha1.New, []byte(secret))
		mac.Write([]byte(Content(pairs, "")))
		return equalHex(hex.EncodeToString(mac.Sum(nil)), got)
	}
	return false
}

// equalHex compares a lower-case hex want with got in any case, in time
// that depends only on the lengths.
func equalHex(want, got string) bool {
	if len(want) != len(got) {
		return false
	}
	var buf [64]byte
	g := buf[:0]
	if len(got) > len(buf) {
		g = make([]byte, 0, len(got))
	}
	for i := 0; i < len(got); i++ {
		c := got[i]
		if 'A' <= c && c <= 'F' {
			c += 'a' - 'A'
		}
		g = append(g, c)
	}
	return subtle.ConstantTimeCompare([]byte(want), g) == 1
}
