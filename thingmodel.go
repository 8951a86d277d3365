package iothub

import (
	"bytes"
	"context"
	"encoding/json"
	"sort"
	"strconv"
	"time"
)

// MaxThingModelBytes caps a product's thing model (compact JSON).
const MaxThingModelBytes = 256 << 10

// EMODEL is data that disagrees with its product's thing model: 400 over
// HTTP, 1204 in an MQTT reply.
const EMODEL = "model_mismatch"

// Data types of a thing model's fields.
var dataTypes = map[string]bool{"int": true, "float": true, "double": true, "bool": true, "string": true,
	"date": true, "enum": true, "array": true, "struct": true}

// Field declares one measurepoint, event field or service parameter.
type Field struct {
	// DataType is int, float, double, bool, string, date (ms since the
	// epoch), enum (an int), array or struct (an object).
	DataType    string `json:"dataType"`
	Description string `json:"description,omitempty"`
}

// EventModel declares an event and its fields.
type EventModel struct {
	OutputData  map[string]Field `json:"outputData"`
	Description string           `json:"description,omitempty"`
}

// ServiceModel declares a service's input and output.
type ServiceModel struct {
	InputData   map[string]Field `json:"inputData"`
	OutputData  map[string]Field `json:"outputData"`
	Description string           `json:"description,omitempty"`
}

// ThingModel is what a product's devices post and answer: set through
// the API, answered on thing.tsltemplate.get, and, once set, every
// measurepoint and event post of the product is checked against it.
type ThingModel struct {
	Measurepoints map[string]Field        `json:"measurepoints"`
	Events        map[string]EventModel   `json:"events"`
	Services      map[string]ServiceModel `json:"services"`
}

// ParseThingModel checks a thing model: at most MaxThingModelBytes, no
// unknown keys, names as measurepoint names, known data types.
func ParseThingModel(raw json.RawMessage) (*ThingModel, error) {
	if len(raw) > MaxThingModelBytes {
		return nil, Errorf(ETOOLARGE, "thing model over %d bytes", MaxThingModelBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var m ThingModel
	if err := dec.Decode(&m); err != nil {
		return nil, Errorf(EINVALID, "thing model: %v", err)
	}
	check := func(where string, fields map[string]Field) error {
		for name, f := range fields {
			if err := checkPointName(name); err != nil {
				return Errorf(EINVALID, "%s %q: %s", where, name, ErrorMessage(err))
			}
			if !dataTypes[f.DataType] {
				return Errorf(EINVALID, "%s %q: unknown dataType %q", where, name, f.DataType)
			}
		}
		return nil
	}
	if err := check("measurepoint", m.Measurepoints); err != nil {
		return nil, err
	}
	for id, e := range m.Events {
		if err := ValidateEventID(id); err != nil {
			return nil, err
		}
		if err := check("event "+id+" field", e.OutputData); err != nil {
			return nil, err
		}
	}
	for id, s := range m.Services {
		if err := ValidateKey("service identifier", id); err != nil {
			return nil, err
		}
		if err := check("service "+id+" input", s.InputData); err != nil {
			return nil, err
		}
		if err := check("service "+id+" output", s.OutputData); err != nil {
			return nil, err
		}
	}
	return &m, nil
}

// CheckMeasurepoints refuses (EMODEL) a post naming a measurepoint the
// model does not declare or holding a value of another type. A value may
// come bare or as {"value":…,"quality":…}.
func (m *ThingModel) CheckMeasurepoints(mp Measurepoints) error {
	return checkFields("measurepoint", m.Measurepoints, mp, true)
}

// CheckEvent refuses (EMODEL) an event the model does not declare, or
// fields its declaration does not hold.
func (m *ThingModel) CheckEvent(id string, fields Measurepoints) error {
	e, ok := m.Events[id]
	if !ok {
		return Errorf(EMODEL, "event %q is not in the product's thing model", id)
	}
	return checkFields("event "+id+" field", e.OutputData, fields, false)
}

func checkFields(what string, declared map[string]Field, mp Measurepoints, quality bool) error {
	names := make([]string, 0, len(mp.Points))
	for name := range mp.Points {
		names = append(names, name)
	}
	sort.Strings(names) // the same post always names the same field first
	for _, name := range names {
		f, ok := declared[name]
		if !ok {
			return Errorf(EMODEL, "%s %q is not in the product's thing model", what, name)
		}
		v := []byte(mp.Points[name])
		if quality && f.DataType != "struct" && len(v) > 0 && v[0] == '{' {
			var q struct {
				Value json.RawMessage `json:"value"`
			}
			if json.Unmarshal(v, &q) == nil && q.Value != nil {
				v = q.Value
			}
		}
		if !hasType(v, f.DataType) {
			return Errorf(EMODEL, "%s %q must be of type %s", what, name, f.DataType)
		}
	}
	return nil
}

// hasType reports whether compact JSON v is a value of dataType.
func hasType(v []byte, dataType string) bool {
	if len(v) == 0 {
		return false
	}
	switch dataType {
	case "int", "date", "enum":
		_, err := strconv.ParseInt(string(v), 10, 64)
		return err == nil
	case "float", "double":
		_, err := strconv.ParseFloat(string(v), 64)
		return err == nil && (v[0] == '-' || (v[0] >= '0' && v[0] <= '9'))
	case "bool":
		return string(v) == "true" || string(v) == "false"
	case "string":
		return v[0] == '"'
	case "array":
		return v[0] == '['
	case "struct":
		return v[0] == '{'
	}
	return false
}

// ThingModelStore keeps each product's thing model (compact JSON).
type ThingModelStore interface {
	// SetThingModel replaces a product's model; nil removes it.
	SetThingModel(ctx context.Context, productKey string, model json.RawMessage, at time.Time) error
	// ThingModel returns a product's model, or ENOTFOUND when none is set.
	ThingModel(ctx context.Context, productKey string) (json.RawMessage, error)
}

// MaxRawBytes caps one thing/model/up_raw payload, and RawPerDevice how
// many a device keeps (the oldest go first).
const (
	MaxRawBytes  = 64 << 10
	RawPerDevice = 100
)

// RawMessage is one up_raw payload as stored.
type RawMessage struct {
	Time    time.Time `json:"time"`
	Payload []byte    `json:"payload"` // base64 in JSON
}

// RawStore keeps the raw payloads devices send on thing/model/up_raw.
type RawStore interface {
	// AppendRaw stores a payload of at most MaxRawBytes (ETOOLARGE) and
	// trims the device's history to RawPerDevice.
	AppendRaw(ctx context.Context, dev DeviceID, payload []byte, at time.Time) error
	// RecentRaw returns up to limit payloads, newest first.
	RecentRaw(ctx context.Context, dev DeviceID, limit int) ([]RawMessage, error)
}
