package iothub

import (
	"bytes"
	"encoding/json"
	"time"
	"unicode/utf8"
)

// Limits on one upstream post. They are the rules the stores apply, kept
// here so that the MQTT adapter refuses a post before it joins a batch:
// a post the store would refuse never reaches it.
const (
	// MaxPointsPerPost caps the measurepoints (or event fields) of one post.
	MaxPointsPerPost = 1000
	// MaxPointName caps the length of a measurepoint or event name in bytes.
	MaxPointName = 128
	// MaxValueDepth caps how deeply a value may nest objects and arrays.
	MaxValueDepth = 16
	// MaxEventID caps the length of an event identifier in bytes.
	MaxEventID = 64
)

// Caps on what one device may store and one read may return (F6). A post,
// attribute or tag over its cap is refused where it enters (the MQTT reply
// is 1008) and nothing of it is stored. With 1000 posts kept per device, a
// device's history is at most 1000 × MaxSampleBytes (64 MiB).
const (
	// MaxSampleBytes caps the measurepoints object of one stored post.
	MaxSampleBytes = 64 << 10
	// MaxAttributesPerDevice caps how many attributes one device holds,
	// and how many tags.
	MaxAttributesPerDevice = 256
	// MaxAttributeBytes caps one attribute or tag value (compact JSON).
	MaxAttributeBytes = 8 << 10
	// MaxTelemetryReadBytes caps the posts one history read returns: rows
	// are read one at a time and the read stops before passing it.
	MaxTelemetryReadBytes = 4 << 20
)

// Measurepoints is a checked post: its compact JSON body and each value in
// compact form, by name.
type Measurepoints struct {
	Body   string
	Points map[string]string
}

// ParseMeasurepoints checks a post's measurepoints (or an event's fields):
// a JSON object of at most MaxPointsPerPost names, each 1 to MaxPointName
// bytes of valid UTF-8 without control characters, whose values nest at
// most MaxValueDepth levels, MaxSampleBytes in all. JSON has no NaN or
// Infinity, so such values fail as malformed. A refusal is EINVALID (or
// ETOOLARGE past MaxSampleBytes) with a message for the device.
func ParseMeasurepoints(raw json.RawMessage) (Measurepoints, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return Measurepoints{}, Errorf(EINVALID, "measurepoints must be a JSON object")
	}
	if len(raw) > MaxSampleBytes { // F6
		return Measurepoints{}, Errorf(ETOOLARGE, "measurepoints over %d bytes: a stored post is at most that", MaxSampleBytes)
	}
	if d := nestingDepth(raw); d > MaxValueDepth+1 {
		return Measurepoints{}, Errorf(EINVALID, "values nest deeper than %d levels", MaxValueDepth)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return Measurepoints{}, Errorf(EINVALID, "measurepoints are not valid JSON (NaN and Infinity are not JSON numbers)")
	}
	if len(m) > MaxPointsPerPost {
		return Measurepoints{}, Errorf(EINVALID, "%d measurepoints in one post: at most %d", len(m), MaxPointsPerPost)
	}
	var buf bytes.Buffer
	points := make(map[string]string, len(m))
	for name, v := range m {
		if err := checkPointName(name); err != nil {
			return Measurepoints{}, err
		}
		buf.Reset()
		_ = json.Compact(&buf, v) // valid: Unmarshal accepted it
		points[name] = buf.String()
	}
	buf.Reset()
	_ = json.Compact(&buf, raw)
	return Measurepoints{Body: buf.String(), Points: points}, nil
}

func checkPointName(name string) error {
	if name == "" {
		return Errorf(EINVALID, "measurepoint names must not be empty")
	}
	if len(name) > MaxPointName {
		return Errorf(EINVALID, "measurepoint name longer than %d bytes", MaxPointName)
	}
	if !utf8.ValidString(name) {
		return Errorf(EINVALID, "measurepoint name is not valid UTF-8")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return Errorf(EINVALID, "measurepoint name holds a control character")
		}
	}
	return nil
}

// ValidateEventID checks the identifier of an event post (the {id} of
// /thing/event/{id}/post).
func ValidateEventID(id string) error {
	if id == "" || len(id) > MaxEventID || !utf8.ValidString(id) {
		return Errorf(EINVALID, "event identifier must be 1 to %d bytes of UTF-8", MaxEventID)
	}
	return nil
}

// nestingDepth returns the deepest nesting of objects and arrays in a JSON
// text, without decoding it (so a hostile depth costs no recursion).
func nestingDepth(b []byte) int {
	depth, deepest := 0, 0
	inString, escaped := false, false
	for _, c := range b {
		switch {
		case escaped:
			escaped = false
		case inString:
			switch c {
			case '\\':
				escaped = true
			case '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			depth++
			deepest = max(deepest, depth)
		case c == '}' || c == ']':
			depth--
		}
	}
	return deepest
}

// DeviceEvent is one upstream event post as stored.
type DeviceEvent struct {
	ProductKey string          `json:"productKey"`
	DeviceKey  string          `json:"deviceKey"`
	EventID    string          `json:"eventId"`
	Time       time.Time       `json:"time"`
	Events     json.RawMessage `json:"events"`
}
