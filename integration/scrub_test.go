package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gosheep/gosheep/api"
	gcluster "github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/proto"
)

// dataDir is the node's --dir.
func (n *node) dataDir() string {
	for i, a := range n.args {
		if a == "--dir" {
			return n.args[i+1]
		}
	}
	return ""
}

// flipByte corrupts one byte of an object's data on n's disk, bypassing sheep.
func (n *node) flipByte(t testing.TB, oid proto.OID, off int64) {
	t.Helper()
	p := filepath.Join(n.dataDir(), "store", "obj", oid.String())
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("corrupt %s: %v", p, err)
	}
	defer f.Close()
	const dataOff = 4096 + 8192 // header + checksum slots of a 4 MiB object
	b := make([]byte, 1)
	f.ReadAt(b, dataOff+off)
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, dataOff+off); err != nil {
		t.Fatal(err)
	}
	t.Logf("injecting: flipped byte %d of %s on %s", off, oid, n.ip)
}

func (n *node) hash(t testing.TB, oid proto.OID) ([20]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return n.conn(t).GetHash(ctx, oid, 0)
}

func (n *node) check(t testing.TB, name string, repair bool) api.CheckReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var r gcluster.Result
	if err := n.conn(t).Meta(ctx, proto.OpMeta, api.MetaRequest{Volume: &api.VolumeOp{Op: api.VolCheck, Name: name, Repair: repair}}, &r); err != nil {
		t.Fatal(err)
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	var rep api.CheckReport
	if err := json.Unmarshal(r.Value, &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestBitRotRepaired flips bytes in object files and sees a read repaired
// (read-repair), a check find and fix one, and the scrub fix one nobody reads.
func TestBitRotRepaired(t *testing.T) {
	// No scrub until step 3 (it would fix step 2's corruption first).
	c := newCluster(t, 3, "--scrub-interval", "1h")
	c.format("3")
	a, b, cc := c.nodes[0], c.nodes[1], c.nodes[2]
	vid := createVDI(t, a, "vol", 16<<20)
	data := randomBytes(16 << 20)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := openVDI(t, a, "vol").WriteAt(ctx, data, 0); err != nil {
		t.Fatal(err)
	}
	good, err := a.hash(t, proto.DataOID(vid, 0))
	if err != nil {
		t.Fatal(err)
	}

	// 1. Read repair: the reading node's own copy is bad.
	b.flipByte(t, proto.DataOID(vid, 0), 100)
	got := make([]byte, 4<<20)
	if err := openVDI(t, b, "vol").ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data[:4<<20]) {
		t.Fatal("read returned corrupt data")
	}
	waitFor(t, "read repair", 20*time.Second, func() bool {
		h, err := b.hash(t, proto.DataOID(vid, 0))
		return err == nil && h == good
	})
	t.Logf("verified: read through %s returned good data and its copy was repaired", b.ip)

	// 2. Check finds a bad copy and repairs it.
	cc.flipByte(t, proto.DataOID(vid, 1), 4096*7+3)
	rep := a.check(t, "vol", false)
	if rep.Corrupt != 1 || rep.Repaired != 0 {
		t.Fatalf("check report %+v, want one corrupt copy", rep)
	}
	rep = a.check(t, "vol", true)
	if rep.Repaired != 1 {
		t.Fatalf("repair report %+v", rep)
	}
	if rep := a.check(t, "vol", false); rep.Corrupt+rep.Missing+rep.Mismatch != 0 {
		t.Fatalf("after repair: %+v", rep)
	}
	t.Logf("verified: check found %d corrupt copy and repair fixed it", 1)

	// 3. Scrub finds and fixes a copy nobody reads.
	cc.args = append(cc.args, "--scrub-interval", "2s", "--scrub-rate", "1G")
	cc.restart()
	c.healthy(c.nodes...)
	good3, _ := a.hash(t, proto.DataOID(vid, 3))
	cc.flipByte(t, proto.DataOID(vid, 3), 12345)
	waitFor(t, "scrub repair", 40*time.Second, func() bool {
		h, err := cc.hash(t, proto.DataOID(vid, 3))
		return err == nil && h == good3
	})
	t.Logf("verified: background scrub repaired the copy on %s", cc.ip)
}
