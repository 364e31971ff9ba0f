package integration

import (
	"encoding/binary"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gosheep/gosheep/target/iscsi/iscsitest"
)

// Reservation CDBs (SPC-4): PERSISTENT RESERVE OUT/IN, WRITE(10), READ(10).
const (
	prRegister = 0
	prReserve  = 1
	prPreempt  = 5 // PREEMPT AND ABORT, as fence_scsi sends
	prWERO     = 5 // write exclusive, registrants only
	statusGood = 0x00
	statusResv = 0x18 // RESERVATION CONFLICT
)

func prOut(c *iscsitest.Conn, sa, typ byte, key, saKey uint64) iscsitest.Result {
	c.T.Helper()
	p := make([]byte, 24)
	binary.BigEndian.PutUint64(p, key)
	binary.BigEndian.PutUint64(p[8:], saKey)
	return c.SCSI([]byte{0x5f, sa, typ, 0, 0, 0, 0, 0, 24, 0}, false, 24, p)
}

func write1(c *iscsitest.Conn, lba byte) iscsitest.Result {
	c.T.Helper()
	return c.SCSI([]byte{0x2a, 0, 0, 0, 0, lba, 0, 0, 1, 0}, false, 512, make([]byte, 512))
}

func mustSCSI(t *testing.T, what string, r iscsitest.Result, status byte) {
	t.Helper()
	if r.Status != status {
		k, asc := iscsitest.SenseKey(r.Sense)
		t.Fatalf("%s: status %#02x (sense %x/%04x), want %#02x", what, r.Status, k, asc, status)
	}
}

func session(t *testing.T, n *node, initiator, vdi string) *iscsitest.Conn {
	t.Helper()
	c := iscsitest.Dial(t, n.ip+":3260")
	c.LoginAs(initiator, "iqn.2026-11.io.gosheep:"+vdi)
	c.DrainUA()
	return c
}

// TestReservationsFenceAcrossNodes is fence_scsi's flow on a 3-node
// cluster: host A registers through two nodes and takes a registrants-only
// write-exclusive reservation; host B, unregistered, cannot write through
// a third node. The node A reserved through is killed (-9): the
// reservation still holds everywhere, A still writes through its other
// path. B then registers and preempts A's key: A's path gets the unit
// attention and can no longer write. The killed node comes back and
// reports B's reservation.
func TestReservationsFenceAcrossNodes(t *testing.T) {
	needTool(t, "iscsi-inq")
	c := newCluster(t, 3)
	c.format("3")
	createVDI(t, c.nodes[0], "fence", 64<<20)
	for _, n := range c.nodes {
		waitFor(t, "target on "+n.ip, 60*time.Second, func() bool { return n.tryISCSI("fence") })
	}
	const hostA, hostB = "iqn.2026-12.test:host-a", "iqn.2026-12.test:host-b"
	a0 := session(t, c.nodes[0], hostA, "fence")
	a2 := session(t, c.nodes[2], hostA, "fence")
	b1 := session(t, c.nodes[1], hostB, "fence")

	mustSCSI(t, "A registers through node 0", prOut(a0, prRegister, 0, 0, 0xa), statusGood)
	mustSCSI(t, "A registers through node 2", prOut(a2, prRegister, 0, 0, 0xa), statusGood)
	// Each node is a target port of its own: A's two registrations name
	// two relative target ports (READ FULL STATUS).
	fs := a0.SCSI([]byte{0x5e, 3, 0, 0, 0, 0, 0, 1, 0, 0}, true, 256, nil)
	mustSCSI(t, "READ FULL STATUS", fs, statusGood)
	rels := map[uint16]bool{}
	for d := fs.Data[min(8, len(fs.Data)):]; len(d) >= 24; {
		rels[binary.BigEndian.Uint16(d[18:])] = true
		d = d[min(len(d), 24+int(binary.BigEndian.Uint32(d[20:]))):]
	}
	if len(rels) != 2 {
		t.Fatalf("READ FULL STATUS: relative target ports %v of A's two registrations, want two: % x", rels, fs.Data)
	}
	mustSCSI(t, "A reserves through node 0", prOut(a0, prReserve, prWERO, 0xa, 0), statusGood)
	mustSCSI(t, "B writes through node 1", write1(b1, 1), statusResv)
	mustSCSI(t, "A writes through node 2", write1(a2, 2), statusGood)

	t.Logf("injecting: kill -9 %s, the node A reserved through", c.nodes[0].ip)
	c.nodes[0].kill()
	waitFor(t, "epoch without node 0", 30*time.Second, func() bool {
		return len(c.nodes[1].state(t).State.Current().Members) == 2
	})
	mustSCSI(t, "B writes through node 1 after the kill", write1(b1, 1), statusResv)
	mustSCSI(t, "A writes through node 2 after the kill", write1(a2, 2), statusGood)

	// Fencing A: B registers and preempts A's key.
	mustSCSI(t, "B registers", prOut(b1, prRegister, 0, 0, 0xb), statusGood)
	mustSCSI(t, "B preempts A", prOut(b1, prPreempt, prWERO, 0xb, 0xa), statusGood)
	r := write1(a2, 2)
	if k, asc := iscsitest.SenseKey(r.Sense); r.Status != 0x02 || k != 6 || asc != 0x2a05 {
		t.Fatalf("A's first command after the preempt: status %#x sense %x/%04x, want REGISTRATIONS PREEMPTED", r.Status, k, asc)
	}
	mustSCSI(t, "A writes through node 2 once fenced", write1(a2, 2), statusResv)
	mustSCSI(t, "B writes through node 1", write1(b1, 1), statusGood)

	c.nodes[0].restart()
	waitFor(t, "epoch with node 0", 30*time.Second, func() bool {
		return len(c.nodes[1].state(t).State.Current().Members) == 3
	})
	waitFor(t, "target on "+c.nodes[0].ip, 60*time.Second, func() bool { return c.nodes[0].tryISCSI("fence") })
	a0 = session(t, c.nodes[0], hostA, "fence")
	rr := a0.SCSI([]byte{0x5e, 1, 0, 0, 0, 0, 0, 0, 255, 0}, true, 255, nil) // READ RESERVATION
	mustSCSI(t, "READ RESERVATION through the returned node", rr, statusGood)
	if len(rr.Data) < 24 || binary.BigEndian.Uint64(rr.Data[8:]) != 0xb || rr.Data[21]&0x0f != prWERO {
		t.Fatalf("READ RESERVATION through the returned node: % x, want key 0xb type %d", rr.Data, prWERO)
	}
	mustSCSI(t, "A writes through the returned node", write1(a0, 3), statusResv)

	// The administrator's override: B's host is gone for good.
	out, err := c.nodes[1].dog(t, nil, "vdi", "reservation", "show", "fence")
	if err != nil || !strings.Contains(out, "registrants only") || !strings.Contains(out, "0x000000000000000b") {
		t.Fatalf("dog vdi reservation show: %v\n%s", err, out)
	}
	if out, err := c.nodes[1].dog(t, nil, "vdi", "reservation", "clear", "fence"); err != nil {
		t.Fatalf("dog vdi reservation clear: %v\n%s", err, out)
	}
	mustSCSI(t, "A writes through node 0 after dog cleared the reservations", write1(a0, 3), statusGood)
	r = write1(b1, 1)
	if k, asc := iscsitest.SenseKey(r.Sense); r.Status != 0x02 || k != 6 || asc != 0x2a03 {
		t.Fatalf("B's first command after the clear: status %#x sense %x/%04x, want RESERVATIONS PREEMPTED", r.Status, k, asc)
	}
	out, err = c.nodes[2].dog(t, nil, "vdi", "reservation", "show", "fence")
	if err != nil || !strings.Contains(out, "no reservations") {
		t.Fatalf("dog vdi reservation show after clear: %v\n%s", err, out)
	}
}

// tryISCSI reports whether n's target for vdi answers an INQUIRY.
func (n *node) tryISCSI(vdi string) bool {
	return exec.Command("iscsi-inq", iscsiURL(n, vdi)).Run() == nil
}
