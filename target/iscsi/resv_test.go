package iscsi

import (
	"context"
	"encoding/binary"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosheep/gosheep/volume/voltest"
)

// stuckDevice holds every write until its context ends: a command in
// flight that only an abort ends.
type stuckDevice struct {
	*voltest.MemDevice
	entered chan struct{}
	left    atomic.Bool // a write returned
}

func (d *stuckDevice) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	select {
	case d.entered <- struct{}{}:
	default:
	}
	<-ctx.Done()
	d.left.Store(true)
	return ctx.Err()
}

func prOutPDU(sa, typ byte, key, saKey uint64) ([]byte, []byte) {
	p := make([]byte, 24)
	binary.BigEndian.PutUint64(p, key)
	binary.BigEndian.PutUint64(p[8:], saKey)
	return []byte{0x5f, sa, typ, 0, 0, 0, 0, 0, 24, 0}, p
}

// PREEMPT AND ABORT from one initiator aborts the preempted initiator's
// command in flight (no status, TAS 0) before it answers GOOD; the
// preempted initiator's next command gets REGISTRATIONS PREEMPTED.
func TestPreemptAndAbortAbortsInFlight(t *testing.T) {
	ts := startServer(t, Config{})
	dev := &stuckDevice{MemDevice: voltest.NewMemDevice(64<<20, 4<<20), entered: make(chan struct{}, 1)}
	if err := ts.AddTarget(TargetSpec{Name: "pa", VID: 0x300, Device: dev}); err != nil {
		t.Fatal(err)
	}
	a, b := dial(t, ts.addr), dial(t, ts.addr)
	a.LoginAs("iqn.2026-12.test:a", IQN("pa"))
	b.LoginAs("iqn.2026-12.test:b", IQN("pa"))
	a.DrainUA()
	b.DrainUA()
	for _, s := range []struct {
		c   *client
		key uint64
	}{{a, 0xa}, {b, 0xb}} {
		cdb, p := prOutPDU(0, 0, 0, s.key)
		if r := s.c.SCSI(cdb, false, 24, p); r.Status != 0 {
			t.Fatalf("register %#x: status %#x", s.key, r.Status)
		}
	}
	// b's write reaches the device and stays there.
	b.Start([]byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}, false, 512, make([]byte, 512))
	select {
	case <-dev.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("b's write never reached the device")
	}
	cdb, p := prOutPDU(5, 1, 0xa, 0xb) // PREEMPT AND ABORT b, write exclusive
	if r := a.SCSI(cdb, false, 24, p); r.Status != 0 {
		t.Fatalf("PREEMPT AND ABORT: status %#x sense % x", r.Status, r.Sense)
	}
	if !dev.left.Load() {
		t.Fatal("PREEMPT AND ABORT answered GOOD with the preempted initiator's write still in flight")
	}
	// b's aborted write has no answer: the next PDU b gets is for the
	// TEST UNIT READY below.
	r := b.SCSI([]byte{0, 0, 0, 0, 0, 0}, false, 0, nil)
	if k, asc := senseKey(r.Sense); r.Status != 2 || k != 6 || asc != 0x2a05 {
		t.Fatalf("b after the preempt: status %#x sense %x/%04x, want REGISTRATIONS PREEMPTED", r.Status, k, asc)
	}
}
