package cluster

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/gosheep/gosheep/internal/atomicfile"
	"github.com/hashicorp/serf/serf"
)

// peersFile remembers the gossip addresses of the other members, so that
// a node restarted without --join finds them again at once. Serf's own
// snapshot is meant to, but it flushes a line only when a later one is
// appended more than 500 ms after the last flush: a node killed in a
// quiet cluster soon after its peers joined restarts knowing nobody, and
// waits for a peer's reconnect attempt (up to 30 s).
const peersFile = "serf-peers.json"

// loadPeers returns the remembered addresses (none if the file is missing
// or unreadable: it is a hint).
func (n *Node) loadPeers() []string {
	b, err := os.ReadFile(filepath.Join(n.cfg.DataDir, peersFile))
	if err != nil {
		return nil
	}
	var addrs []string
	if json.Unmarshal(b, &addrs) != nil {
		return nil
	}
	return addrs
}

// rememberPeers records the alive members' gossip addresses other than
// ours when they changed; the leader loop calls it on every Serf event.
// Departed members stay until a new set is seen, so a node whose peers
// all went down still remembers where they were.
func (n *Node) rememberPeers() {
	var addrs []string
	for _, m := range n.serf.Members() {
		if m.Name == n.cfg.ID || m.Status != serf.StatusAlive {
			continue
		}
		addrs = append(addrs, net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port))))
	}
	slices.Sort(addrs)
	if len(addrs) == 0 || slices.Equal(addrs, n.peers) {
		return
	}
	b, err := json.Marshal(addrs)
	if err == nil {
		err = atomicfile.Write(filepath.Join(n.cfg.DataDir, peersFile), b, 0o644)
	}
	if err != nil {
		n.log.Warn("cluster: remembering peers", "err", err)
		return
	}
	n.peers = addrs
}

// retryJoin joins addrs every second (every 30 s after the first 30
// tries) until this node sees another member or closes.
func (n *Node) retryJoin(addrs []string) {
	defer n.wg.Done()
	for try := 0; ; try++ {
		wait := time.Second
		if try >= 30 {
			wait = 30 * time.Second
		}
		time.Sleep(wait)
		n.mu.Lock()
		closed := n.closed
		n.mu.Unlock()
		if closed {
			return
		}
		if len(n.serf.Members()) > 1 {
			return
		}
		if _, err := n.serf.Join(addrs, true); err == nil {
			return
		}
	}
}
