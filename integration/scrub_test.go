package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosheep/gosheep/api"
	"github.com/gosheep/gosheep/client/vdi"
	gcluster "github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/proto"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// dataDir is the node's --dir.
// stripHolder is the node whose store holds strip i of oid.
func (c *cluster) stripHolder(t *testing.T, oid proto.OID, i int) *node {
	t.Helper()
	for _, n := range c.nodes {
		if _, err := os.Stat(filepath.Join(n.dataDir(), "store", "obj", fmt.Sprintf("%s_%d", oid, i))); err == nil {
			return n
		}
	}
	t.Fatalf("no node holds strip %d of %s", i, oid)
	return nil
}

// crashAll kills every node (kill -9) and starts them all again.
func (c *cluster) crashAll() {
	for _, n := range c.nodes {
		n.kill()
	}
	for _, n := range c.nodes {
		n.start()
	}
	for _, n := range c.nodes {
		n.waitListening()
	}
}

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

// writeOneCopy writes data at off into n's copy of oid alone (strip >= 0:
// that strip of it), bypassing the gateway: what a write torn by its
// writer's crash leaves behind.
func (n *node) writeOneCopy(t testing.TB, ctx context.Context, epoch uint32, oid proto.OID, strip int, off uint32, data []byte) {
	t.Helper()
	req := proto.Request{Opcode: proto.OpWritePeer, Epoch: epoch}
	a := proto.ObjArgs{OID: uint64(oid), Offset: off}
	if strip >= 0 {
		a.CopyPolicy, a.ECIndex = 0xff, uint8(strip)
	}
	req.SetObj(a)
	if _, _, err := n.conn(t).Do(ctx, req, data, nil); err != nil {
		t.Fatal(err)
	}
}

// keepWriting writes n-byte blocks to vol in the background, write i at
// at(i), each with other content than the last, until the returned stop
// is called; stop returns the first write error. wrote, when not nil,
// sees each block written (on the writer's goroutine).
func keepWriting(ctx context.Context, vol *vdi.VDI, n int, at func(i int) uint64, wrote func(off uint64, b []byte)) (stop func() error) {
	quit := make(chan struct{})
	werr := make(chan error, 1)
	go func() {
		buf := randomBytes(n)
		for i := 0; ; i++ {
			select {
			case <-quit:
				werr <- nil
				return
			default:
			}
			buf[0]++
			off := at(i)
			if err := vol.WriteAt(ctx, buf, off); err != nil {
				werr <- err
				return
			}
			if wrote != nil {
				wrote(off, buf)
			}
		}
	}()
	return func() error {
		close(quit)
		return <-werr
	}
}

// tearCopy rewrites one 4 KiB block of b's copy of oid alone, as a
// write torn by its writer's crash leaves it, and returns the hash the
// other copies keep (a's).
func tearCopy(t *testing.T, ctx context.Context, a, b *node, oid proto.OID, off uint32, fill byte) [20]byte {
	t.Helper()
	good, err := a.hash(t, oid)
	if err != nil {
		t.Fatal(err)
	}
	b.writeOneCopy(t, ctx, a.state(t).State.Epoch(), oid, -1, off, bytes.Repeat([]byte{fill}, 4096))
	if h, err := b.hash(t, oid); err != nil || h == good {
		t.Fatalf("the injected write did not change %s's copy (%v)", b.ip, err)
	}
	return good
}

// waitHash waits until n's copy of oid hashes to want.
func (n *node) waitHash(t *testing.T, oid proto.OID, want [20]byte, within time.Duration, what string) {
	t.Helper()
	waitFor(t, what, within, func() bool {
		h, err := n.hash(t, oid)
		return err == nil && h == want
	})
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
	if n := b.counter(t, "gosheep_read_repairs_total", "", ""); n != 1 {
		t.Fatalf("%s counted %v read repairs, want 1", b.ip, n)
	}
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

// TestCheckRepairsDifferingCopies: a copy that differs from the others
// with sound checksums (what a write torn by a crash leaves) is found by
// `vdi check`. A repair during which the object is written leaves it
// alone (the write must not be undone) and says to check again; the next
// repair gives the copy the majority's content, while another object of
// the VDI keeps being written.
func TestCheckRepairsDifferingCopies(t *testing.T) {
	// No converge pass: the differing copy is check's to find.
	c := newCluster(t, 3, "--scrub-interval", "1h", "--converge-interval", "0")
	c.format("3")
	a, b := c.nodes[0], c.nodes[1]
	vid := createVDI(t, a, "vol", 16<<20)
	data := randomBytes(16 << 20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vol := openVDI(t, a, "vol")
	if err := vol.WriteAt(ctx, data, 0); err != nil {
		t.Fatal(err)
	}
	oid := proto.DataOID(vid, 1)

	// One copy alone takes a write, as if its writer died before the
	// others got it.
	good := tearCopy(t, ctx, a, b, oid, 8192, 0xab)
	t.Logf("injecting: one copy of %s on %s alone rewritten", oid, b.ip)
	rep := a.check(t, "vol", false)
	if rep.Mismatch != 1 || rep.Corrupt+rep.Missing != 0 {
		t.Fatalf("check report %+v, want one copy differing", rep)
	}

	// A write into the object while the repair waits for writes in
	// flight to land: the repair must leave the copies alone.
	later := randomBytes(4096)
	wdone := make(chan error, 1)
	go func() {
		time.Sleep(2 * time.Second)
		wdone <- vol.WriteAt(ctx, later, 4<<20+65536)
	}()
	rep = a.check(t, "vol", true)
	if err := <-wdone; err != nil {
		t.Fatal(err)
	}
	if rep.Repaired != 0 || !strings.Contains(strings.Join(rep.Details, "\n"), "check again") {
		t.Fatalf("repair while the object was written: %+v, want it left for the next check", rep)
	}
	t.Logf("verified: a repair during a write to the object left it alone: %q", rep.Details)
	copy(data[4<<20+65536:], later)
	good, err := a.hash(t, oid)
	if err != nil {
		t.Fatal(err)
	}

	// Writes to another object go on during the repair.
	stop := keepWriting(ctx, vol, 64<<10, func(i int) uint64 { return 8<<20 + uint64(i%16)*(64<<10) }, nil)
	rep = a.check(t, "vol", true)
	if err := stop(); err != nil {
		t.Fatalf("writes during the repair: %v", err)
	}
	if rep.Repaired != 1 {
		t.Fatalf("repair report %+v", rep)
	}
	if h, err := b.hash(t, oid); err != nil || h != good {
		t.Fatalf("repaired copy on %s: %v, or still differs", b.ip, err)
	}
	if rep := a.check(t, "vol", false); rep.Corrupt+rep.Missing+rep.Mismatch != 0 {
		t.Fatalf("after repair: %+v", rep)
	}
	got := make([]byte, 4<<20)
	if err := openVDI(t, b, "vol").ReadAt(ctx, got, 4<<20); err != nil || !bytes.Equal(got, data[4<<20:8<<20]) {
		t.Fatalf("object after repair, read through %s: %v, or other bytes than written", b.ip, err)
	}
	t.Logf("verified: check found the differing copy and repair gave it the majority's content")
}

// TestScrubConvergesDifferingCopies: copies left different by a write
// torn by its writer's crash (one copy alone rewritten) converge to the
// majority's content by the scrub, with nobody running a check.
func TestScrubConvergesDifferingCopies(t *testing.T) {
	c := newCluster(t, 3, "--scrub-interval", "2s", "--scrub-rate", "1G", "--converge-interval", "0")
	c.format("3")
	a, b := c.nodes[0], c.nodes[1]
	vid := createVDI(t, a, "vol", 8<<20)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := openVDI(t, a, "vol").WriteAt(ctx, randomBytes(8<<20), 0); err != nil {
		t.Fatal(err)
	}
	oid := proto.DataOID(vid, 0)
	good := tearCopy(t, ctx, a, b, oid, 4096, 0xcd)
	t.Logf("injecting: one copy of %s on %s alone rewritten", oid, b.ip)
	b.waitHash(t, oid, good, 60*time.Second, "copies to converge")
	t.Logf("verified: the scrub gave the differing copy on %s the majority's content", b.ip)
	var differing, repaired float64
	for _, n := range c.nodes {
		differing += n.counter(t, "gosheep_scrub_findings_total", "kind", "differing")
		repaired += n.counter(t, "gosheep_scrub_findings_total", "kind", "repaired")
	}
	if differing < 1 || repaired < 1 {
		t.Fatalf("scrub findings: %v differing, %v repaired; want both counted", differing, repaired)
	}
}

// TestConvergeDifferingCopies: copies left different by a torn write
// agree again by the converge pass (checksum fingerprints, then the
// majority's content), with the scrub far off and nobody running a
// check; copies that agree are left alone, and a volume being written
// meanwhile keeps its writes.
func TestConvergeDifferingCopies(t *testing.T) {
	c := newCluster(t, 3, "--scrub-interval", "1h", "--converge-interval", "2s")
	c.format("3")
	a, b := c.nodes[0], c.nodes[1]
	vid := createVDI(t, a, "vol", 16<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vol := openVDI(t, a, "vol")
	data := randomBytes(16 << 20)
	if err := vol.WriteAt(ctx, data, 0); err != nil {
		t.Fatal(err)
	}
	oid := proto.DataOID(vid, 2)
	// Another object is written all along: its copies differ only while a
	// write is in flight, which the pass must not take for a torn write.
	stop := keepWriting(ctx, vol, 64<<10, func(i int) uint64 { return uint64(i%16) * (64 << 10) },
		func(off uint64, b []byte) { copy(data[off:], b) })
	good := tearCopy(t, ctx, a, b, oid, 12288, 0x5a)
	t.Logf("injecting: one copy of %s on %s alone rewritten", oid, b.ip)
	b.waitHash(t, oid, good, 60*time.Second, "copies to converge")
	if err := stop(); err != nil {
		t.Fatalf("writes during the passes: %v", err)
	}
	t.Logf("verified: the converge pass gave the differing copy on %s the majority's content", b.ip)
	// Copies with the same content, written through the gateway (a local
	// create, peer creates and writes) or repaired, agree by their
	// fingerprints: the pass compares data only where copies differ.
	for i := range uint32(4) {
		o := proto.DataOID(vid, i)
		var fps [][20]byte
		for _, n := range c.nodes {
			fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
			fp, err := n.conn(t).GetSumsHash(fctx, o)
			fcancel()
			if err != nil {
				t.Fatalf("fingerprint of %s on %s: %v", o, n.ip, err)
			}
			fps = append(fps, fp)
		}
		if fps[0] != fps[1] || fps[0] != fps[2] {
			t.Fatalf("fingerprints of %s's equal copies differ: %x", o, fps)
		}
	}
	if rep := a.check(t, "vol", false); rep.Corrupt+rep.Missing+rep.Mismatch != 0 {
		t.Fatalf("check after converging: %+v", rep)
	}
	got := make([]byte, len(data))
	if err := openVDI(t, b, "vol").ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read through %s: %v, or other bytes than written", b.ip, err)
	}
	var differing, repaired float64
	for _, n := range c.nodes {
		differing += n.counter(t, "gosheep_scrub_findings_total", "kind", "differing")
		repaired += n.counter(t, "gosheep_scrub_findings_total", "kind", "repaired")
	}
	if repaired != 1 || differing < 1 {
		t.Fatalf("findings: %v differing, %v repaired; want the one torn object repaired, once", differing, repaired)
	}
	var byFP, byData float64
	for _, n := range c.nodes {
		byFP += n.counter(t, "gosheep_copy_comparisons_total", "by", "fingerprint")
		byData += n.counter(t, "gosheep_copy_comparisons_total", "by", "data")
	}
	if byFP == 0 || byData == 0 {
		t.Fatalf("comparisons: %v by fingerprint, %v by data; want both (equal copies by fingerprint, the torn one by data)", byFP, byData)
	}
	t.Logf("verified: %v comparisons decided by fingerprint, %v by data", byFP, byData)
}

// TestConvergeAfterNodeLeaves: a node leaving the cluster (it may have
// died in the middle of writes) brings the converge pass forward: copies
// left different converge within seconds, with the pass's interval an
// hour.
func TestConvergeAfterNodeLeaves(t *testing.T) {
	c := newCluster(t, 4, "--scrub-interval", "1h", "--converge-interval", "1h")
	c.format("3")
	a := c.nodes[0]
	vid := createVDI(t, a, "vol", 16<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := openVDI(t, a, "vol").WriteAt(ctx, randomBytes(16<<20), 0); err != nil {
		t.Fatal(err)
	}
	// An object node 0 holds, and a node that holds none of its copies.
	var oid proto.OID
	var holders []*node
	var other *node
	for i := range uint32(4) {
		o := proto.DataOID(vid, i)
		holders, other = nil, nil
		for _, n := range c.nodes {
			if slices.Contains(n.dataObjects(t), o) {
				holders = append(holders, n)
			} else {
				other = n
			}
		}
		if len(holders) == 3 && other != nil && other != a && holders[0] == a {
			oid = o
			break
		}
	}
	if oid == 0 {
		t.Fatal("no object with three copies, one of them on node 0, and a node without one")
	}
	b := holders[1]
	good := tearCopy(t, ctx, a, b, oid, 4096, 0x77)
	t.Logf("injecting: one copy of %s on %s alone rewritten; killing %s, which holds none", oid, b.ip, other.ip)
	other.kill()
	b.waitHash(t, oid, good, 90*time.Second, "copies to converge after the node left")
	t.Logf("verified: %s left, and the pass it brought forward gave %s's copy the majority's content", other.ip, b.ip)
}

// TestConvergeLeavesRecoveryAlone: copies a returning node holds from
// before it left are outdated, not torn, until recovery brings them up to
// date. With recovery off, the converge pass (every second here) must
// leave them alone: with two copies, a tie goes to the primary, and an
// outdated primary's copy would replace the current one, undoing
// acknowledged writes. And `vdi check` must not report them (or strips
// the returning node lacks) as damaged or lost: it compares copies as
// recovery will leave them.
func TestConvergeLeavesRecoveryAlone(t *testing.T) {
	c := newCluster(t, 3, "--scrub-interval", "1h", "--converge-interval", "1s")
	c.format("2")
	a, b, cc := c.nodes[0], c.nodes[1], c.nodes[2]
	const size = 64 << 20
	createVDI(t, a, "vol", size)
	ec, err := proto.ParseRedundancy("2:1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := a.conn(t).NewVDI(ctx, "ecvol", proto.VDIArgs{VDISize: size, Copies: ec.NrCopies(), CopyPolicy: ec.Policy()}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"vol", "ecvol"} {
		if err := openVDI(t, a, name).WriteAt(ctx, randomBytes(size), 0); err != nil {
			t.Fatal(err)
		}
	}
	c.waitRecovered(a, b, cc)

	t.Logf("injecting: kill -9 %s, then rewrite both volumes", cc.ip)
	cc.kill()
	waitFor(t, "two-member epoch", 30*time.Second, func() bool { return len(a.state(t).State.Current().Members) == 2 })
	model, ecModel := randomBytes(size), randomBytes(size)
	if err := openVDI(t, a, "vol").WriteAt(ctx, model, 0); err != nil {
		t.Fatal(err)
	}
	if err := openVDI(t, a, "ecvol").WriteAt(ctx, ecModel, 0); err != nil {
		t.Fatal(err)
	}
	c.waitRecovered(a, b)

	if out, err := a.dog(t, nil, "cluster", "recover", "disable"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Logf("injecting: recovery off, restart %s: its copies are outdated", cc.ip)
	cc.restart()
	waitFor(t, "three-member epoch", 30*time.Second, func() bool { return len(a.state(t).State.Current().Members) == 3 })
	// Passes run every second; a repair waits out the peer timeout (10 s)
	// before it replaces anything.
	time.Sleep(20 * time.Second)
	// check reads each copy through its holder's recovery guard, so the
	// outdated copies and missing strips are recovered first and nothing
	// is reported damaged or lost; `vdi check --repair` repairs nothing.
	for _, name := range []string{"vol", "ecvol"} {
		rep := a.check(t, name, false)
		if rep.Lost+rep.Missing+rep.Mismatch+rep.Corrupt+rep.Unreachable != 0 ||
			!strings.Contains(strings.Join(rep.Details, "\n"), "recovery is under way") {
			t.Fatalf("check of %s during recovery: %+v, want nothing damaged, and that recovery is under way", name, rep)
		}
		rep = a.check(t, name, true)
		if rep.Repaired != 0 || !strings.Contains(strings.Join(rep.Details, "\n"), "recovery is under way") {
			t.Fatalf("check --repair of %s during recovery: %+v, want nothing repaired and why", name, rep)
		}
	}

	if out, err := a.dog(t, nil, "cluster", "recover", "enable"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	c.waitRecovered(a, b, cc)
	for _, n := range []*node{a, b, cc} {
		for name, want := range map[string][]byte{"vol": model, "ecvol": ecModel} {
			got := make([]byte, size)
			if err := openVDI(t, n, name).ReadAt(ctx, got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("read of %s through %s: acknowledged writes undone", name, n.ip)
			}
		}
	}
	t.Logf("verified: every acknowledged byte is intact through each node")
}

// TestCheckHotObject: `vdi check` of a volume being written reports no
// differing copies: copies differ for a moment while a write is in
// flight, and a check that hashed them one after another took that for a
// torn write.
func TestCheckHotObject(t *testing.T) {
	c := newCluster(t, 3, "--scrub-interval", "1h", "--converge-interval", "0")
	c.format("3")
	a := c.nodes[0]
	createVDI(t, a, "vol", 8<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vol := openVDI(t, a, "vol")
	if err := vol.WriteAt(ctx, randomBytes(8<<20), 0); err != nil {
		t.Fatal(err)
	}
	var writes atomic.Int64
	stop := keepWriting(ctx, vol, 4096, func(i int) uint64 { return 4<<20 + uint64(i%256)*4096 },
		func(uint64, []byte) { writes.Add(1) })
	var bad []api.CheckReport
	for range 10 {
		before := writes.Load()
		rep := a.check(t, "vol", false)
		if writes.Load() == before {
			t.Fatal("no write landed during a check: the test shows nothing")
		}
		if rep.Mismatch+rep.Corrupt+rep.Missing+rep.Lost != 0 {
			bad = append(bad, rep)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Fatalf("%d of 10 checks of a volume being written reported damage: %+v", len(bad), bad)
	}
	if rep := a.check(t, "vol", false); rep.Mismatch+rep.Corrupt+rep.Missing+rep.Lost != 0 {
		t.Fatalf("check once the writes stopped: %+v", rep)
	}
}

// TestScrubReencodesInconsistentParity: parity left inconsistent with the
// data strips (what an erasure-coded write torn by its primary's crash
// leaves) is re-encoded by the scrub, with nobody running a check.
func TestScrubReencodesInconsistentParity(t *testing.T) {
	// No scrub until the damage is seen by a check.
	c := newCluster(t, 3, "--scrub-interval", "1h")
	c.format("2:1")
	a := c.nodes[0]
	vid := createVDI(t, a, "vol", 8<<20)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	data := randomBytes(8 << 20)
	if err := openVDI(t, a, "vol").WriteAt(ctx, data, 0); err != nil {
		t.Fatal(err)
	}
	// Rewrite a block of the parity strip alone, through its holder.
	oid := proto.DataOID(vid, 0)
	holder, primary := c.stripHolder(t, oid, 2), c.stripHolder(t, oid, 0)
	holder.writeOneCopy(t, ctx, a.state(t).State.Epoch(), oid, 2, 4096, bytes.Repeat([]byte{0xee}, 4096))
	t.Logf("injecting: parity strip of %s on %s alone rewritten", oid, holder.ip)
	if rep := a.check(t, "vol", false); rep.Mismatch != 1 {
		t.Fatalf("check after the injection: %+v, want the parity inconsistent", rep)
	}
	primary.args = append(primary.args, "--scrub-interval", "2s", "--scrub-rate", "1G")
	primary.restart()
	c.healthy(c.nodes...)
	waitFor(t, "parity re-encoded", 60*time.Second, func() bool {
		rep := a.check(t, "vol", false)
		return rep.Mismatch+rep.Corrupt+rep.Missing == 0
	})
	got := make([]byte, 8<<20)
	if err := openVDI(t, a, "vol").ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after the re-encode: %v, or other bytes than written", err)
	}
	t.Logf("verified: the scrub re-encoded the inconsistent parity on %s", holder.ip)
}

// counter is the value of the counter family{label=value} on n's /metrics.
func (n *node) counter(t testing.TB, family, label, value string) float64 {
	t.Helper()
	url := fmt.Sprintf("http://%s:9100/metrics", n.ip)
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	return counterIn(fams, family, label, value)
}

// counterIn is the value of the counter family{label=value} in fams (0 if
// absent).
func counterIn(fams map[string]*dto.MetricFamily, family, label, value string) float64 {
	if f, ok := fams[family]; ok {
		for _, m := range f.Metric {
			if label == "" { // a counter without labels
				return m.GetCounter().GetValue()
			}
			for _, l := range m.Label {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestConvergeAfterUncleanRestart: a crash can leave an object's copies
// different (a write in flight reached some copies only), and when the
// nodes come back with no member missing, no epoch change brings the next
// converge pass forward. A node that restarts after an unclean stop asks
// every member to compare its copies, so they agree again within seconds,
// not at the next periodic pass (an hour here).
func TestConvergeAfterUncleanRestart(t *testing.T) {
	c := newCluster(t, 3, "--scrub-interval", "1h", "--converge-interval", "1h")
	c.format("3")
	a, b := c.nodes[0], c.nodes[1]
	vid := createVDI(t, a, "vol", 8<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := openVDI(t, a, "vol").WriteAt(ctx, randomBytes(8<<20), 0); err != nil {
		t.Fatal(err)
	}
	oid := proto.DataOID(vid, 0)
	good := tearCopy(t, ctx, a, b, oid, 4096, 0x77)
	t.Logf("injecting: one copy of %s on %s alone rewritten; kill -9 every node, then start them again", oid, b.ip)
	c.crashAll()
	b.waitHash(t, oid, good, 60*time.Second, "copies to converge after the unclean restart")
	t.Logf("verified: the restart brought a converge pass forward, and %s's copy has the majority's content", b.ip)

	t.Logf("a clean stop leaves no marker: the next start asks for nothing")
	a.stop()
	before := len(a.logText())
	a.start()
	a.waitListening()
	waitFor(t, "node back", 30*time.Second, func() bool { return a.info(t).Epoch != 0 })
	time.Sleep(3 * time.Second) // an announcement follows joining the epoch within a second
	if strings.Contains(a.logText()[before:], "members asked to compare copies") {
		t.Fatalf("%s announced a crash after a clean stop", a.ip)
	}
}

// TestRepairTornStripeAfterCrash: a primary that died writing an
// erasure-coded object may leave its parity disagreeing with the data
// (which would decode wrongly once a data strip is lost). When it comes
// back it checks the parity of the EC objects it was writing, instead of
// leaving them to the next scrub (an hour here).
func TestRepairTornStripeAfterCrash(t *testing.T) {
	c := newCluster(t, 3, "--scrub-interval", "1h", "--converge-interval", "1h")
	c.format("2:1")
	a := c.nodes[0]
	vid := createVDI(t, a, "vol", 8<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Written twice: the first write creates the objects (a create is
	// atomic), the second mutates them, as a write torn by a crash does.
	data := randomBytes(8 << 20)
	for range 2 {
		data = randomBytes(8 << 20)
		if err := openVDI(t, a, "vol").WriteAt(ctx, data, 0); err != nil {
			t.Fatal(err)
		}
	}
	oid := proto.DataOID(vid, 0)
	holder := c.stripHolder(t, oid, 2)
	holder.writeOneCopy(t, ctx, a.state(t).State.Epoch(), oid, 2, 4096, bytes.Repeat([]byte{0xee}, 4096))
	if rep := a.check(t, "vol", false); rep.Mismatch != 1 {
		t.Fatalf("check after the injection: %+v, want the parity inconsistent", rep)
	}
	t.Logf("injecting: parity strip of %s on %s alone rewritten (a torn write); kill -9 every node, then start them again", oid, holder.ip)
	c.crashAll()
	c.healthy(c.nodes...)
	waitFor(t, "parity re-encoded", 60*time.Second, func() bool {
		rep := a.check(t, "vol", false)
		return rep.Mismatch+rep.Corrupt+rep.Missing+rep.Lost == 0
	})
	got := make([]byte, 8<<20)
	if err := openVDI(t, a, "vol").ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after the re-encode: %v, or other bytes than written", err)
	}
	t.Logf("verified: the restarted primary re-encoded the parity the crash left inconsistent")
}

// TestWriteRebuildsLostCopy: an object whose copy is missing on one holder
// (its file lost while the node was down) is rebuilt whole by the next
// write to it. A write used to take the object for discarded and allocate
// it again, creating that copy with the written range alone: reads
// through that node then returned zeros for acknowledged data.
func TestWriteRebuildsLostCopy(t *testing.T) {
	c := newCluster(t, 3, "--scrub-interval", "1h", "--converge-interval", "1h")
	c.format("3")
	a, b := c.nodes[0], c.nodes[1]
	vid := createVDI(t, a, "vol", 8<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	data := randomBytes(8 << 20)
	if err := openVDI(t, a, "vol").WriteAt(ctx, data, 0); err != nil {
		t.Fatal(err)
	}
	oid := proto.DataOID(vid, 0)
	t.Logf("injecting: stop %s, remove its copy of %s, start it again", b.ip, oid)
	b.stop()
	if err := os.Remove(filepath.Join(b.dataDir(), "store", "obj", oid.String())); err != nil {
		t.Fatal(err)
	}
	b.start()
	b.waitListening()
	c.healthy(c.nodes...)
	newer := randomBytes(64 << 10)
	if err := openVDI(t, a, "vol").WriteAt(ctx, newer, 0); err != nil {
		t.Fatal(err)
	}
	copy(data, newer)
	got := make([]byte, 8<<20)
	if err := openVDI(t, b, "vol").ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read through %s after the write: other bytes than written", b.ip)
	}
	if rep := a.check(t, "vol", false); rep.Missing+rep.Mismatch+rep.Corrupt+rep.Lost != 0 {
		t.Fatalf("check after the write: %+v, want every copy whole and equal", rep)
	}
	t.Logf("verified: the write rebuilt %s's copy whole", b.ip)
}

// TestConvergeRebuildsMissingStrip: a strip missing where it should be (a
// create torn by a crash, a lost file) is rebuilt by the converge pass,
// which asks each EC object's strip holders whether they hold their strip
// (no data read). Reads need only the data strips, so a missing parity
// strip would otherwise wait for the scrub (an hour here).
func TestConvergeRebuildsMissingStrip(t *testing.T) {
	c := newCluster(t, 3, "--scrub-interval", "1h", "--converge-interval", "2s")
	c.format("2:1")
	a := c.nodes[0]
	vid := createVDI(t, a, "vol", 8<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	data := randomBytes(8 << 20)
	if err := openVDI(t, a, "vol").WriteAt(ctx, data, 0); err != nil {
		t.Fatal(err)
	}
	oid := proto.DataOID(vid, 0)
	name := fmt.Sprintf("%s_%d", oid, 2) // the parity strip
	holder := c.stripHolder(t, oid, 2)
	t.Logf("injecting: stop %s, remove its parity strip of %s, start it again", holder.ip, oid)
	holder.stop()
	path := filepath.Join(holder.dataDir(), "store", "obj", name)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	holder.start()
	holder.waitListening()
	c.healthy(c.nodes...)
	waitFor(t, "the missing strip rebuilt", 60*time.Second, func() bool {
		_, err := os.Stat(path)
		return err == nil
	})
	if rep := a.check(t, "vol", false); rep.Missing+rep.Mismatch+rep.Corrupt+rep.Lost != 0 {
		t.Fatalf("check after the rebuild: %+v, want every strip present and consistent", rep)
	}
	got := make([]byte, 8<<20)
	if err := openVDI(t, a, "vol").ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after the rebuild: %v, or other bytes than written", err)
	}
	t.Logf("verified: the converge pass rebuilt the parity strip on %s", holder.ip)
}
