package mqtt

import (
	"slices"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// The subscription tree matches as MQTT says: '+' one level, '#' the rest
// (the parent level included), no wildcard at the first level for '$'
// topics, one delivery per connection at its highest QoS; removing the
// last subscription leaves an empty tree.
func TestTopicIndexMatches(t *testing.T) {
	var idx topicIndex
	a, b, c := &conn{id: "a"}, &conn{id: "b"}, &conn{id: "c"}
	subs := []struct {
		c      *conn
		filter string
		qos    byte
	}{
		{a, "/sys/pk/dk/#", 0},
		{a, "/sys/pk/+/cmd", 1},
		{b, "/sys/+/+/cmd", 0},
		{b, "#", 0},
		{c, "$SYS/x", 0},
		{c, "/sys/pk/dk/cmd/", 1},
	}
	for _, s := range subs {
		idx.add(s.c, packets.Subscription{Filter: s.filter, Qos: s.qos})
	}
	cases := []struct {
		topic string
		want  map[string]byte // client id: QoS delivered
	}{
		{"/sys/pk/dk/cmd", map[string]byte{"a": 1, "b": 0}},
		{"/sys/pk/dk", map[string]byte{"a": 0, "b": 0}},
		{"/sys/pk/other/cmd", map[string]byte{"a": 1, "b": 0}},
		{"/sys/pk/dk/cmd/", map[string]byte{"a": 0, "b": 0, "c": 1}},
		{"$SYS/x", map[string]byte{"c": 0}},
		{"/ext/x", map[string]byte{"b": 0}},
	}
	for _, tc := range cases {
		got := map[string]byte{}
		for _, d := range idx.match(tc.topic) {
			if _, dup := got[d.c.id]; dup {
				t.Fatalf("%s: %s matched twice", tc.topic, d.c.id)
			}
			got[d.c.id] = d.sub.Qos
		}
		if len(got) != len(tc.want) {
			t.Fatalf("%s: got %v, want %v", tc.topic, got, tc.want)
		}
		for id, q := range tc.want {
			if g, ok := got[id]; !ok || g != q {
				t.Fatalf("%s: got %v, want %v", tc.topic, got, tc.want)
			}
		}
	}
	for _, s := range subs {
		idx.remove(s.c, s.filter)
	}
	if idx.root.children != nil && len(idx.root.children) != 0 || idx.root.plus != nil || idx.root.hash != nil {
		t.Fatalf("tree not empty after every filter was removed: %+v", idx.root)
	}
}

func TestValidFilters(t *testing.T) {
	good := []string{"a", "/", "a/+/b", "#", "a/#", "+", "+/+"}
	bad := []string{"", "a#", "a/#/b", "a+", "a/b+/c", "a\x00"}
	for _, f := range good {
		if !validFilter(f) {
			t.Errorf("%q refused", f)
		}
	}
	for _, f := range bad {
		if validFilter(f) {
			t.Errorf("%q accepted", f)
		}
	}
	if !slices.ContainsFunc([]string{"$share/g/a"}, sharedFilter) || sharedFilter("a/$share") {
		t.Error("shared filters misread")
	}
}
