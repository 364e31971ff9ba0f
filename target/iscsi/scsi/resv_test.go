package scsi

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/gosheep/gosheep/cluster/resv"
	"github.com/gosheep/gosheep/volume/voltest"
)

// fakeCluster is an in-process Reservations for LUs standing for the same
// VDI on several nodes: one state per VID, changed in call order and
// installed on every LU, with the aborts it causes ended, before Do
// returns, as the sheep's Raft-backed one guarantees. fail makes Do fail (metadata quorum lost).
type fakeCluster struct {
	mu   sync.Mutex
	st   map[uint32]*resv.State
	lus  []*LU
	fail error
}

func (f *fakeCluster) Do(ctx context.Context, vid uint32, op resv.Op) (*resv.State, resv.Outcome, error) {
	f.mu.Lock()
	if f.fail != nil {
		f.mu.Unlock()
		return nil, resv.Outcome{}, f.fail
	}
	s := f.st[vid].Clone()
	if s == nil {
		s = &resv.State{}
	}
	o := resv.Apply(s, op)
	f.st[vid] = s
	lus := f.lus
	f.mu.Unlock()
	for _, lu := range lus {
		if lu.VID() == vid {
			lu.Install(s)
		}
	}
	for _, lu := range lus {
		if err := lu.WaitAborts(ctx); err != nil {
			return nil, o, err
		}
	}
	return s.Clone(), o, nil
}

// twoNodes returns one VDI's LU on two nodes, each with one nexus whose
// power-on unit attention is consumed.
func twoNodes(t *testing.T) (*fakeCluster, [2]*LU, [2]*Nexus) {
	f := &fakeCluster{st: map[uint32]*resv.State{}}
	dev := voltest.NewMemDevice(16<<20, 1<<20)
	var lus [2]*LU
	var ns [2]*Nexus
	for i, node := range []string{"n1", "n2"} {
		lus[i] = New(Config{Device: dev, VID: 42, Name: "v", MaxTransfer: 1 << 20, Reservations: f})
		f.lus = append(f.lus, lus[i])
		ns[i] = &Nexus{ID: "iqn.test:x,i,0x1@" + node, InitiatorName: "iqn.test:x", ISID: 1, RelPort: 1}
		lus[i].Attach(ns[i])
		do(t, lus[i], ns[i], make([]byte, 6), nil)
	}
	return f, lus, ns
}

func prOut(sa, typ byte, key, saKey uint64) ([]byte, []byte) {
	cdb := []byte{0x5f, sa, typ, 0, 0, 0, 0, 0, 24, 0}
	p := make([]byte, 24)
	binary.BigEndian.PutUint64(p, key)
	binary.BigEndian.PutUint64(p[8:], saKey)
	return cdb, p
}

var (
	write10 = []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}
	read10  = []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0}
)

func mustStatus(t *testing.T, what string, r Result, status byte) {
	t.Helper()
	if r.Status != status {
		k, a := senseOf(r)
		t.Fatalf("%s: status %#x (sense %x/%04x), want %#x", what, r.Status, k, a, status)
	}
}

func mustUA(t *testing.T, what string, r Result, want ascq) {
	t.Helper()
	if k, a := senseOf(r); k != KeyUnitAttention || a != want {
		t.Fatalf("%s: sense %x/%04x, want UNIT ATTENTION %04x", what, k, a, want)
	}
}

// The same initiator port reaches the VDI through two nodes: two I_T
// nexuses, one set of reservations.
func TestReservationsSharedAcrossNodes(t *testing.T) {
	_, lu, n := twoNodes(t)
	block := make([]byte, 512)

	cdb, p := prOut(0, 0, 0, 0xa) // REGISTER a through node 1
	mustStatus(t, "register through n1", do(t, lu[0], n[0], cdb, p), StatusGood)
	cdb, p = prOut(1, resv.WriteExclusive, 0xa, 0) // RESERVE, write exclusive
	mustStatus(t, "reserve through n1", do(t, lu[0], n[0], cdb, p), StatusGood)

	mustStatus(t, "write through n2", do(t, lu[1], n[1], write10, block), StatusReservationConflict)
	mustStatus(t, "read through n2", do(t, lu[1], n[1], read10, nil), StatusGood)
	mustStatus(t, "write through n1", do(t, lu[0], n[0], write10, block), StatusGood)

	// READ KEYS through node 2 sees node 1's registration.
	r := do(t, lu[1], n[1], []byte{0x5e, 0, 0, 0, 0, 0, 0, 0, 255, 0}, nil)
	mustStatus(t, "read keys through n2", r, StatusGood)
	if len(r.Data) != 16 || binary.BigEndian.Uint64(r.Data[8:]) != 0xa {
		t.Fatalf("READ KEYS through n2: % x", r.Data)
	}

	// Node 2's nexus registers and preempts: node 1's nexus hears of it.
	cdb, p = prOut(0, 0, 0, 0xb)
	mustStatus(t, "register through n2", do(t, lu[1], n[1], cdb, p), StatusGood)
	cdb, p = prOut(4, resv.ExclusiveAccess, 0xb, 0xa)
	mustStatus(t, "preempt through n2", do(t, lu[1], n[1], cdb, p), StatusGood)
	mustUA(t, "n1 after preempt", do(t, lu[0], n[0], read10, nil), ascRegistrationsPreempted)
	mustStatus(t, "read through n1 after preempt", do(t, lu[0], n[0], read10, nil), StatusReservationConflict)

	// A LU reset through node 2 reaches node 1's nexus too.
	if err := lu[1].Reset(context.Background()); err != nil {
		t.Fatal(err)
	}
	mustUA(t, "n1 after reset", do(t, lu[0], n[0], make([]byte, 6), nil), ascLogicalUnitReset)
	mustUA(t, "n2 after reset", do(t, lu[1], n[1], make([]byte, 6), nil), ascLogicalUnitReset)
}

func TestReserve6SharedAcrossNodes(t *testing.T) {
	_, lu, n := twoNodes(t)
	reserve6, release6 := []byte{0x16, 0, 0, 0, 0, 0}, []byte{0x17, 0, 0, 0, 0, 0}
	mustStatus(t, "reserve(6) through n1", do(t, lu[0], n[0], reserve6, nil), StatusGood)
	mustStatus(t, "reserve(6) through n2", do(t, lu[1], n[1], reserve6, nil), StatusReservationConflict)
	mustStatus(t, "read through n2", do(t, lu[1], n[1], read10, nil), StatusReservationConflict)
	mustStatus(t, "release(6) through n2", do(t, lu[1], n[1], release6, nil), StatusGood) // not the holder
	mustStatus(t, "still reserved", do(t, lu[1], n[1], read10, nil), StatusReservationConflict)

	// Node 1's session ends: its reservation goes on node 2 as well.
	if err := lu[0].Detach(context.Background(), n[0]); err != nil {
		t.Fatal(err)
	}
	mustStatus(t, "reserve(6) through n2 after n1's nexus left", do(t, lu[1], n[1], reserve6, nil), StatusGood)
}

// Without the metadata quorum a reservation change fails with sense data;
// nothing changes and nothing panics.
func TestReservationsUnavailable(t *testing.T) {
	f, lu, n := twoNodes(t)
	f.fail = errors.New("no quorum")
	cdb, p := prOut(0, 0, 0, 0xa)
	r := do(t, lu[0], n[0], cdb, p)
	if k, a := senseOf(r); r.Status != StatusCheckCondition || k != KeyHardwareError || a != ascInternalFailure {
		t.Fatalf("register without quorum: %#x %x/%04x", r.Status, k, a)
	}
	if err := lu[0].Reset(context.Background()); !errors.Is(err, ErrReservations) {
		t.Fatalf("reset without quorum: %v", err)
	}
	f.fail = nil
	mustStatus(t, "write after the failed register", do(t, lu[1], n[1], write10, make([]byte, 512)), StatusGood)
}

// Install applies a state once: an older or repeated one (a watcher and
// the requester both delivering it) raises no second unit attention.
func TestInstallOnce(t *testing.T) {
	_, lu, n := twoNodes(t)
	st := &resv.State{}
	resv.Apply(st, resv.Op{Kind: resv.OpReset})
	lu[0].Install(st)
	lu[0].Install(st)
	lu[0].Install(&resv.State{})
	mustUA(t, "first", do(t, lu[0], n[0], make([]byte, 6), nil), ascLogicalUnitReset)
	mustStatus(t, "second", do(t, lu[0], n[0], make([]byte, 6), nil), StatusGood)
}

// PREEMPT AND ABORT aborts the preempted nexus's commands on the port
// that has them, and completes only once they ended; PREEMPT aborts
// nothing.
func TestPreemptAndAbortWaitsForAborts(t *testing.T) {
	f := &fakeCluster{st: map[uint32]*resv.State{}}
	dev := voltest.NewMemDevice(16<<20, 1<<20)
	var (
		mu      sync.Mutex
		aborted []string
		hold    = make(chan struct{})
	)
	var lus [2]*LU
	var ns [2]*Nexus
	for i, node := range []string{"n1", "n2"} {
		lus[i] = New(Config{Device: dev, VID: 42, Name: "v", MaxTransfer: 1 << 20, Reservations: f,
			Abort: func(id string) {
				<-hold // the aborted command takes a while to end
				mu.Lock()
				aborted = append(aborted, node+":"+id)
				mu.Unlock()
			}})
		f.lus = append(f.lus, lus[i])
		ns[i] = &Nexus{ID: "iqn.test:" + node + ",i,0x1@" + node, InitiatorName: "iqn.test:" + node, ISID: 1, RelPort: 1}
		lus[i].Attach(ns[i])
		do(t, lus[i], ns[i], make([]byte, 6), nil)
	}
	for i, key := range []uint64{0xa, 0xb} {
		cdb, p := prOut(0, 0, 0, key)
		mustStatus(t, "register", do(t, lus[i], ns[i], cdb, p), StatusGood)
	}
	cdb, p := prOut(4, resv.WriteExclusive, 0xa, 0xb) // plain PREEMPT of b
	mustStatus(t, "preempt", do(t, lus[0], ns[0], cdb, p), StatusGood)
	if len(aborted) != 0 {
		t.Fatalf("PREEMPT aborted %v", aborted)
	}
	cdb, p = prOut(0, 0, 0, 0xc)               // b registers again
	do(t, lus[1], ns[1], make([]byte, 6), nil) // its REGISTRATIONS PREEMPTED
	mustStatus(t, "register again", do(t, lus[1], ns[1], cdb, p), StatusGood)

	done := make(chan Result, 1)
	go func() {
		cdb, p := prOut(5, resv.WriteExclusive, 0xa, 0xc) // PREEMPT AND ABORT of b
		done <- do(t, lus[0], ns[0], cdb, p)
	}()
	select {
	case r := <-done:
		t.Fatalf("PREEMPT AND ABORT completed (%#x) before the aborted command ended", r.Status)
	case <-time.After(50 * time.Millisecond):
	}
	close(hold)
	mustStatus(t, "preempt and abort", <-done, StatusGood)
	mu.Lock()
	defer mu.Unlock()
	if len(aborted) != 1 || aborted[0] != "n2:"+ns[1].ID {
		t.Fatalf("aborted %v, want only b's nexus on n2", aborted)
	}
}
