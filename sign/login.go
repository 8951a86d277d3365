package sign

import (
	"errors"
	"strconv"
	"strings"
)

// Secure modes of the EnOS login.
const (
	ModeStatic  = 2 // signed with the DeviceSecret
	ModeDynamic = 3 // signed with the ProductSecret: dynamic activation
)

// Login is a parsed MQTT CONNECT in the EnOS format.
type Login struct {
	ClientID   string // the device-chosen part before the first '|'
	SecureMode int
	SignMethod Method
	Timestamp  string
	DeviceKey  string
	ProductKey string
}

// Errors from ParseLogin.
var (
	ErrBadUsername = errors.New("sign: username is not deviceKey&productKey")
	ErrBadClientID = errors.New("sign: clientId lacks |securemode=…,signmethod=…,timestamp=…|")
)

// MaxFieldLen caps the clientId and username the parser accepts.
const MaxFieldLen = 1024

// ParseLogin parses a CONNECT clientId and username:
// clientId "{cid}|securemode=2,signmethod=sha256,timestamp=123|" and
// username "{deviceKey}&{productKey}". Parameters may come in any order;
// unknown parameters are ignored. The cid may carry anything but '|'
// (the Java SDK appends a "{ip=…,version=…}" block).
func ParseLogin(clientID, username string) (Login, error) {
	var l Login
	if len(clientID) > MaxFieldLen || len(username) > MaxFieldLen {
		return l, ErrBadClientID
	}
	dk, pk, ok := strings.Cut(username, "&")
	if !ok || dk == "" || pk == "" || strings.Contains(pk, "&") {
		return l, ErrBadUsername
	}
	l.DeviceKey, l.ProductKey = dk, pk
	cid, rest, ok := strings.Cut(clientID, "|")
	if !ok {
		return l, ErrBadClientID
	}
	params, _, ok := strings.Cut(rest, "|")
	if !ok {
		return l, ErrBadClientID
	}
	l.ClientID = cid
	for params != "" {
		var kv string
		kv, params, _ = strings.Cut(params, ",")
		k, v, _ := strings.Cut(kv, "=")
		switch strings.TrimSpace(k) {
		case "securemode":
			switch strings.TrimSpace(v) {
			case "2":
				l.SecureMode = ModeStatic
			case "3":
				l.SecureMode = ModeDynamic
			case "4":
				l.SecureMode = 4
			default:
				return l, ErrBadClientID
			}
		case "signmethod":
			l.SignMethod = Method(strings.ToLower(strings.TrimSpace(v)))
		case "timestamp":
			l.Timestamp = strings.TrimSpace(v)
		}
	}
	if l.SecureMode == 0 || l.SignMethod == "" {
		return l, ErrBadClientID
	}
	if _, err := newHash(l.SignMethod); err != nil {
		return l, err
	}
	return l, nil
}

// Pairs returns the signed fields of a login.
func (l Login) Pairs() []Pair {
	return []Pair{
		{"clientId", l.ClientID},
		{"deviceKey", l.DeviceKey},
		{"productKey", l.ProductKey},
		{"timestamp", l.Timestamp},
	}
}

// Verify checks password against the login's fields and secret.
func (l Login) Verify(secret, password string) bool {
	return Verify(l.SignMethod, l.Pairs(), secret, password)
}

// Credentials builds the clientId, username and password a device sends.
func Credentials(cid, productKey, deviceKey, secret string, mode int, m Method, timestamp string) (clientID, username, password string, err error) {
	l := Login{ClientID: cid, DeviceKey: deviceKey, ProductKey: productKey, Timestamp: timestamp, SignMethod: m}
	password, err = Compute(m, l.Pairs(), secret)
	if err != nil {
		return "", "", "", err
	}
	clientID = cid + "|securemode=" + strconv.Itoa(mode) + ",signmethod=" + string(m) + ",timestamp=" + timestamp + "|"
	return clientID, deviceKey + "&" + productKey, password, nil
}
