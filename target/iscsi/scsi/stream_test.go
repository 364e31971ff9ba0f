package scsi

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/gosheep/gosheep/volume/voltest"
)

func newPartsLU(t *testing.T, parts bool) (*LU, *voltest.PartsDevice, *Nexus) {
	mem := voltest.NewMemDevice(16<<20, 1<<20)
	dev := &voltest.PartsDevice{Device: mem, Parts: parts}
	lu := New(Config{Device: dev, VID: 42, Name: "v", TargetIQN: "iqn.2026-11.io.gosheep:v", MaxTransfer: 1 << 20})
	n := &Nexus{ID: "i1", InitiatorName: "iqn.test:i1", ISID: 1, RelPort: 1}
	lu.Attach(n)
	do(t, lu, n, make([]byte, 6), nil) // the power-on UA
	return lu, dev, n
}

func TestWriteStream(t *testing.T) {
	ctx := context.Background()
	write10 := []byte{0x2a, 0, 0, 0, 0, 8, 0, 0, 0x80, 0} // LBA 8, 128 blocks (64 KiB)
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096)

	t.Run("parts then the rest", func(t *testing.T) {
		lu, dev, n := newPartsLU(t, true)
		c, early := lu.Prepare(n, write10)
		if early != nil {
			t.Fatalf("prepare: %+v", early)
		}
		ws, ok := c.Stream(ctx)
		if !ok {
			t.Fatal("a plain WRITE(10) to a device that takes parts is not streamed")
		}
		ws.Write(ctx, data[:16<<10])
		ws.Write(ctx, data[16<<10:32<<10])
		// The range stays locked: an overlapping write waits for Finish.
		other, _ := lu.Prepare(n, write10)
		done := make(chan Result, 1)
		go func() { done <- other.Execute(ctx, bytes.Repeat([]byte{7}, 64<<10)) }()
		select {
		case <-done:
			t.Fatal("an overlapping write ran while the stream held the range")
		case <-time.After(50 * time.Millisecond):
		}
		if r := ws.Finish(ctx, data); r.Status != StatusGood {
			t.Fatalf("finish: %+v", r)
		}
		if r := <-done; r.Status != StatusGood {
			t.Fatalf("overlapping write: %+v", r)
		}
		w := func(off, n uint64) voltest.Write { return voltest.Write{Off: off, Len: n} }
		want := []voltest.Write{w(4096, 16<<10), w(4096+16<<10, 16<<10), w(4096+32<<10, 32<<10), w(4096, 64<<10)}
		if got := dev.Writes(); !slices.Equal(got, want) {
			t.Fatalf("device writes %v, want %v", got, want)
		}
	})

	t.Run("data arrives whole", func(t *testing.T) {
		lu, dev, n := newPartsLU(t, true)
		c, _ := lu.Prepare(n, write10)
		ws, _ := c.Stream(ctx)
		ws.Write(ctx, data[:4096])
		if r := ws.Finish(ctx, data); r.Status != StatusGood {
			t.Fatalf("finish: %+v", r)
		}
		got := make([]byte, len(data))
		if err := dev.ReadAt(ctx, got, 4096); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("the medium holds other data (%v)", err)
		}
	})

	t.Run("a failed part fails the command and stops writing", func(t *testing.T) {
		lu, dev, n := newPartsLU(t, true)
		c, _ := lu.Prepare(n, write10)
		ws, _ := c.Stream(ctx)
		mem := dev.Device.(*voltest.MemDevice)
		mem.Fail = func(string, uint64, uint64) error { return errors.New("disk on fire") }
		ws.Write(ctx, data[:16<<10])
		mem.Fail = nil
		ws.Write(ctx, data[16<<10:32<<10])
		if r := ws.Finish(ctx, data); r.Status != StatusCheckCondition {
			t.Fatalf("finish after a failed part: %+v", r)
		}
		if n := len(dev.Writes()); n != 1 {
			t.Fatalf("%d device writes after a failed part, want 1", n)
		}
	})

	for _, tc := range []struct {
		name  string
		parts bool
		cdb   []byte
	}{
		{"device wants whole writes", false, write10},
		{"FUA", true, []byte{0x2a, 0x08, 0, 0, 0, 8, 0, 0, 0x80, 0}},
		{"WRITE AND VERIFY", true, []byte{0x2e, 0, 0, 0, 0, 8, 0, 0, 0x80, 0}},
		{"COMPARE AND WRITE", true, []byte{0x89, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0}},
		{"no blocks", true, []byte{0x2a, 0, 0, 0, 0, 8, 0, 0, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lu, _, n := newPartsLU(t, tc.parts)
			c, early := lu.Prepare(n, tc.cdb)
			if early != nil {
				t.Fatalf("prepare: %+v", early)
			}
			if ws, ok := c.Stream(ctx); ok {
				ws.Close()
				t.Fatal("streamed")
			}
		})
	}
}
