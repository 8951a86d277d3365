// Package iothub is the domain of the hub: products, devices, certificates,
// organisations and API keys, the errors they raise and the small interfaces
// the adapters (sqlite, pki, mqtt, http) implement or consume. It imports
// nothing but the standard library.
package iothub

import (
	"errors"
	"fmt"
)

// Error codes shared by every layer. The HTTP adapter maps them to status
// codes; the MQTT adapter maps them to reply codes.
const (
	EINVALID      = "invalid"        // bad input: 400
	EUNAUTHORIZED = "unauthorized"   // no or unknown credentials: 401
	EFORBIDDEN    = "forbidden"      // credentials without the right: 403
	ENOTFOUND     = "not_found"      // absent or in another org: 404
	ECONFLICT     = "conflict"       // duplicate or wrong state: 409
	ETOOLARGE     = "too_large"      // body or payload over its cap: 413
	ETOOMANY      = "rate_limited"   // throttled: 429
	EOFFLINE      = "device_offline" // device has no live session: 409
	ETIMEOUT      = "timeout"        // device did not answer in time: 504
	EUNAVAILABLE  = "unavailable"    // the hub is shutting down: 503
	EINTERNAL     = "internal"       // anything else: 500
)

// Error is a domain error carrying a machine-readable code and a message
// that is safe to show to the caller.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("iothub error: code=%s message=%s", e.Code, e.Message)
}

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL
// for any other non-nil error and "" for nil.
func ErrorCode(err error) string {
	var e *Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &e):
		return e.Code
	default:
		return EINTERNAL
	}
}

// ErrorMessage returns the caller-safe message of err: the message of an
// *Error, or a generic text for anything else so internals never leak.
func ErrorMessage(err error) string {
	var e *Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &e):
		return e.Message
	default:
		return "internal error"
	}
}
