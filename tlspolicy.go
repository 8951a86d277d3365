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

// LegacyTLS12CipherSuites are RSA key exchange suites for device TLS stacks
// that cannot do ECDHE (the EnOS C SDK's bundled mbedtls): no forward
// secrecy, and two of them CBC. They are offered only when an operator
// asks (--tls-legacy-suites), only on MQTT over TLS, only in TLS 1.2.
var LegacyTLS12CipherSuites = []uint16{
	tls.TLS_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_RSA_WITH_AES_128_CBC_SHA256,
	tls.TLS_RSA_WITH_AES_128_CBC_SHA,
}
