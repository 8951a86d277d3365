package iothub

import (
	"crypto/rand"
	"time"
)

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// RandomString returns n characters drawn uniformly from [0-9A-Za-z] by
// crypto/rand.
func RandomString(n int) string {
	out := make([]byte, 0, n)
	buf := make([]byte, n+n/2)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			panic("iothub: crypto/rand failed: " + err.Error())
		}
		for _, b := range buf {
			if b < 248 && len(out) < n { // 248 = 4×62: no modulo bias
				out = append(out, base62[b%62])
			}
		}
	}
	return string(out)
}

// Lengths of generated identifiers and secrets.
const (
	ProductKeyLen = 10
	SecretLen     = 32 // about 190 bits
	DeviceKeyLen  = 12
)

// NewDevice returns a fresh inactive device of p with a new secret and
// asset id; an empty deviceKey is generated. It validates deviceKey.
func NewDevice(p *Product, deviceKey, name string, now time.Time) (*Device, error) {
	if deviceKey == "" {
		deviceKey = RandomString(DeviceKeyLen)
	}
	if err := ValidateKey("deviceKey", deviceKey); err != nil {
		return nil, err
	}
	if len(name) > 200 {
		return nil, Errorf(EINVALID, "name is longer than 200 bytes")
	}
	return &Device{
		OrgID:        p.OrgID,
		ProductKey:   p.ProductKey,
		DeviceKey:    deviceKey,
		DeviceSecret: RandomString(SecretLen),
		AssetID:      RandomString(ProductKeyLen),
		Name:         name,
		State:        StateInactive,
		CreatedAt:    now,
	}, nil
}
