package iothub

import (
	"encoding/json"
	"testing"
)

func TestThingModelChecks(t *testing.T) {
	m, err := ParseThingModel(json.RawMessage(`{"measurepoints":{"i":{"dataType":"int"},"f":{"dataType":"double"},
		"b":{"dataType":"bool"},"s":{"dataType":"string"},"a":{"dataType":"array"},"o":{"dataType":"struct"}},
		"events":{"e":{"outputData":{"n":{"dataType":"int"}}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		points string
		ok     bool
	}{
		{`{"i":3,"f":1.5e3,"b":true,"s":"x","a":[1],"o":{"k":1}}`, true},
		{`{"i":{"value":3,"quality":9},"f":-2}`, true},
		{`{"o":{"value":3}}`, true}, // a struct's value is the object itself
		{`{"i":3.5}`, false},
		{`{"i":"3"}`, false},
		{`{"f":"1.5"}`, false},
		{`{"b":1}`, false},
		{`{"s":null}`, false},
		{`{"i":{"quality":9}}`, false},
		{`{"unknown":1}`, false},
	} {
		mp, err := ParseMeasurepoints(json.RawMessage(c.points))
		if err != nil {
			t.Fatal(err)
		}
		err = m.CheckMeasurepoints(mp)
		if (err == nil) != c.ok || (err != nil && ErrorCode(err) != EMODEL) {
			t.Errorf("%s: %v, want ok=%v", c.points, err, c.ok)
		}
	}
	ev, _ := ParseMeasurepoints(json.RawMessage(`{"n":1}`))
	if err := m.CheckEvent("e", ev); err != nil {
		t.Errorf("declared event: %v", err)
	}
	if err := m.CheckEvent("other", ev); ErrorCode(err) != EMODEL {
		t.Errorf("undeclared event: %v", err)
	}
	for _, bad := range []string{`{"measurepoints":{"x":{"dataType":"decimal"}}}`, `{"measurepoints":{"":{"dataType":"int"}}}`,
		`{"other":{}}`, `[]`, `{"services":{"a/b":{}}}`} {
		if _, err := ParseThingModel(json.RawMessage(bad)); ErrorCode(err) != EINVALID {
			t.Errorf("model %s: %v, want invalid", bad, err)
		}
	}
}
