package nbd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/gosheep/gosheep/volume/voltest"
)

// lendingFixture serves a lending device of size bytes, with n bytes of
// data at 4096.
func lendingFixture(t *testing.T, cfg Config, size uint64, n int) (string, *voltest.LendingDevice, []byte) {
	t.Helper()
	mem := voltest.NewMemDevice(size, 4<<20)
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i*13 + i>>11)
	}
	if err := mem.WriteAt(context.Background(), data, 4096, false); err != nil {
		t.Fatal(err)
	}
	dev := &voltest.LendingDevice{Device: mem, Dir: t.TempDir()}
	exps := newTestExports()
	exps.add("disk", "", false, dev)
	cfg.Exports = exps
	addr, _ := startServer(t, cfg)
	return addr, dev, data
}

// TestReadLent: a large read the device lends goes out from the lent file
// (sendfile), as a simple reply or one structured data chunk, and is
// released once written; small reads and failed lends are copied, with
// the same answers.
func TestReadLent(t *testing.T) {
	addr, dev, data := lendingFixture(t, Config{}, 8<<20, 1<<20)
	for _, structured := range []bool{false, true} {
		c := dialRaw(t, addr)
		c.open("disk", structured, false)
		before := dev.Lends()
		res := c.do(0, cmdRead, 4096, 1<<20, nil)
		if res.errno != 0 || !bytes.Equal(res.data, data) {
			t.Fatalf("structured %v: lent read: errno %d, equal %v", structured, res.errno, bytes.Equal(res.data, data))
		}
		if dev.Lends() != before+1 {
			t.Fatalf("structured %v: %d lends for a 1 MiB read, want 1", structured, dev.Lends()-before)
		}
		if structured && len(res.chunks) != 1 {
			t.Fatalf("%d chunks, want one data chunk", len(res.chunks))
		}
		dev.WaitReleased(t)
		if res := c.do(0, cmdRead, 4096, 32<<10, nil); res.errno != 0 || !bytes.Equal(res.data, data[:32<<10]) {
			t.Fatalf("small read: errno %d", res.errno)
		}
		if dev.Lends() != before+1 {
			t.Fatal("a 32 KiB read was lent")
		}
	}
	dev.Fail = errors.New("no local copy")
	lends := dev.Lends()
	c := dialRaw(t, addr)
	c.open("disk", true, false)
	if res := c.do(0, cmdRead, 4096, 1<<20, nil); res.errno != 0 || !bytes.Equal(res.data, data) {
		t.Fatalf("read after a failed lend: errno %d", res.errno)
	}
	if dev.Lends() != lends {
		t.Fatal("a failing device lent")
	}
}

// TestLendTimeout: a client that stops reading a lent read loses its
// connection after LendTimeout, and the lend (which pins the store) is
// released then.
func TestLendTimeout(t *testing.T) {
	addr, dev, _ := lendingFixture(t, Config{LendTimeout: 200 * time.Millisecond}, 64<<20, 4096)
	c := dialRaw(t, addr)
	c.open("disk", false, false)
	c.send(0, cmdRead, 1, 0, 32<<20, nil) // more than the socket buffers hold, and never read
	start := time.Now()
	for dev.Lends() == 0 || dev.Releases() != dev.Lends() {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("%d lends, %d released after %v", dev.Lends(), dev.Releases(), time.Since(start))
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, c.br); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("connection not closed")
	}
}
