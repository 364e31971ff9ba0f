package cluster

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

// eventLog records the events a node's OnEvent is given.
type eventLog struct {
	mu    sync.Mutex
	names []string
}

func (l *eventLog) add(name string) {
	l.mu.Lock()
	l.names = append(l.names, name)
	l.mu.Unlock()
}

func (l *eventLog) count(name string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.names {
		if s == name {
			n++
		}
	}
	return n
}

// TestBroadcastReachesEveryMember: an event one member broadcasts reaches
// OnEvent on every member, the sender included, once.
func TestBroadcastReachesEveryMember(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-node gossip test")
	}
	fw := &localForwarder{nodes: map[netip.AddrPort]*Node{}}
	logs := map[string]*eventLog{"a": {}, "b": {}, "c": {}}
	onEvent := func(id string) func(*Config) {
		return func(c *Config) { c.OnEvent = logs[id].add }
	}
	a, acfg := startNode(t, fw, t.TempDir(), "a", nil, onEvent("a"))
	defer a.Close()
	join := []string{acfg.GossipAddr.String()}
	b, _ := startNode(t, fw, t.TempDir(), "b", join, onEvent("b"))
	defer b.Close()
	c, _ := startNode(t, fw, t.TempDir(), "c", join, onEvent("c"))
	defer c.Close()
	waitFor(t, "3 gossip members", 10*time.Second, func() bool { return len(a.Members()) == 3 })

	if err := b.Broadcast("ping"); err != nil {
		t.Fatal(err)
	}
	for id, l := range logs {
		waitFor(t, "event at "+id, 10*time.Second, func() bool { return l.count("ping") > 0 })
	}
	time.Sleep(time.Second) // gossip retransmits: none may be delivered twice
	for id, l := range logs {
		if n := l.count("ping"); n != 1 {
			t.Fatalf("%s got the event %d times, want once", id, n)
		}
	}
}
