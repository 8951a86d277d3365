package mqtt

import (
	"strings"
	"sync"

	"github.com/mochi-mqtt/server/v2/packets"
)

// topicIndex finds the subscriptions a published topic matches: a tree
// of filter levels, '+' and '#' among them.
type topicIndex struct {
	mu   sync.RWMutex
	root topicNode
}

type topicNode struct {
	children   map[string]*topicNode // by level, wildcards aside
	plus, hash *topicNode            // the "+" and "#" children
	subs       map[*conn]packets.Subscription
}

// child returns the node for level under n, or nil.
func (n *topicNode) child(level string) *topicNode {
	switch level {
	case "+":
		return n.plus
	case "#":
		return n.hash
	}
	return n.children[level]
}

// grow returns the node for level under n, made if need be.
func (n *topicNode) grow(level string) *topicNode {
	if next := n.child(level); next != nil {
		return next
	}
	next := &topicNode{}
	switch level {
	case "+":
		n.plus = next
	case "#":
		n.hash = next
	default:
		if n.children == nil {
			n.children = map[string]*topicNode{}
		}
		n.children[level] = next
	}
	return next
}

// drop forgets the child for level.
func (n *topicNode) drop(level string) {
	switch level {
	case "+":
		n.plus = nil
	case "#":
		n.hash = nil
	default:
		delete(n.children, level)
	}
}

// target is one delivery of a published message.
type target struct {
	c   *conn
	sub packets.Subscription
}

// add records c's subscription, replacing one with the same filter.
func (t *topicIndex) add(c *conn, sub packets.Subscription) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := &t.root
	for level := range strings.SplitSeq(sub.Filter, "/") {
		n = n.grow(level)
	}
	if n.subs == nil {
		n.subs = map[*conn]packets.Subscription{}
	}
	n.subs[c] = sub
}

// remove forgets c's subscription to filter, and the tree nodes left empty.
func (t *topicIndex) remove(c *conn, filter string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.root.remove(c, strings.Split(filter, "/"))
}

func (n *topicNode) remove(c *conn, levels []string) (empty bool) {
	if len(levels) == 0 {
		delete(n.subs, c)
	} else if next := n.child(levels[0]); next != nil && next.remove(c, levels[1:]) {
		n.drop(levels[0])
	}
	return len(n.subs) == 0 && len(n.children) == 0 && n.plus == nil && n.hash == nil
}

// match returns the deliveries of a message published to topic: one per
// subscribed connection, at the highest QoS among its matching filters.
func (t *topicIndex) match(topic string) []target {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var out []target
	t.root.match(topic, true, true, &out)
	if len(out) < 2 {
		return out
	}
	best := make(map[*conn]int, len(out))
	uniq := out[:0]
	for _, d := range out {
		if i, seen := best[d.c]; seen {
			if d.sub.Qos > uniq[i].sub.Qos {
				uniq[i] = d
			}
			continue
		}
		best[d.c] = len(uniq)
		uniq = append(uniq, d)
	}
	return uniq
}

// match collects the subscriptions under n that match the levels of
// rest (none left when more is false), without allocating. Wildcards at
// the first level do not match topics starting with '$' [MQTT-4.7.2-1].
func (n *topicNode) match(rest string, more, first bool, out *[]target) {
	if !more {
		n.collect(out)
		if n.hash != nil {
			n.hash.collect(out) // "a/#" matches "a" too
		}
		return
	}
	level, tail, hasTail := strings.Cut(rest, "/")
	if !first || !strings.HasPrefix(level, "$") {
		if n.hash != nil {
			n.hash.collect(out)
		}
		if n.plus != nil {
			n.plus.match(tail, hasTail, false, out)
		}
	}
	if exact := n.children[level]; exact != nil {
		exact.match(tail, hasTail, false, out)
	}
}

func (n *topicNode) collect(out *[]target) {
	for c, sub := range n.subs {
		*out = append(*out, target{c, sub})
	}
}

// validFilter checks a topic filter: not empty, '#' only as the whole
// last level, '+' only as a whole level.
func validFilter(filter string) bool {
	if filter == "" || strings.ContainsRune(filter, 0) {
		return false
	}
	levels := strings.Split(filter, "/")
	for i, l := range levels {
		switch {
		case l == "#" && i != len(levels)-1:
			return false
		case l != "#" && l != "+" && strings.ContainsAny(l, "#+"):
			return false
		}
	}
	return true
}

// validTopic checks a topic name published to: not empty, no wildcard.
func validTopic(topic string) bool {
	return topic != "" && !strings.ContainsAny(topic, "#+\x00")
}

// sharedFilter reports a shared subscription ($share/…), which the hub
// does not offer.
func sharedFilter(filter string) bool {
	return strings.HasPrefix(strings.ToLower(filter), "$share/")
}
