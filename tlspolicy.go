package iothub

import "crypto/tls"

// TLS12CipherSuites are the only TLS 1.2 suites the hub's listeners offer:
// ECDHE key exchange (forward secrecy) with AEAD ciphers, no CBC. TLS 1.3
// suites are fixed by Go and all qualify. Every TLS listener applies this
// list and a TLS 1.2 minimum.
var TLS12CipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}
