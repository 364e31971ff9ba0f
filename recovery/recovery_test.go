package recovery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/gosheep/gosheep/cluster/placement"
	"github.com/gosheep/gosheep/erasure"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

// remoteStores serves other nodes' real stores by address.
type remoteStores map[string]*store.Disk

func entries(ctx context.Context, d *store.Disk, oid *proto.OID) ([]Entry, error) {
	live, err := d.List(ctx)
	if err != nil {
		return nil, err
	}
	stale, err := d.ListStale(ctx)
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, o := range live {
		if oid == nil || o.Key.OID == *oid {
			out = append(out, Entry{Key: o.Key, Size: o.Size, Epoch: o.Epoch})
		}
	}
	for _, s := range stale {
		if oid == nil || s.Key.OID == *oid {
			out = append(out, Entry{Key: s.Key, Size: s.Size, Epoch: s.ObjEpoch, Stale: s.Epoch})
		}
	}
	return out, nil
}

func (r remoteStores) List(ctx context.Context, addr string) ([]Entry, error) {
	return entries(ctx, r[addr], nil)
}

func (r remoteStores) Stat(ctx context.Context, addr string, oid proto.OID) ([]Entry, error) {
	return entries(ctx, r[addr], &oid)
}

func (r remoteStores) Read(ctx context.Context, addr string, e Entry, off uint32, p []byte) error {
	if e.Stale != 0 {
		return r[addr].ReadStale(ctx, e.Key, e.Stale, off, p)
	}
	return r[addr].Read(ctx, e.Key, off, p)
}

// TestECRecoveryRebuildsOrGivesUp: node n0 recovers the strips the new
// placement gives it. Of an object with enough strips elsewhere it
// rebuilds them byte-exact; of one with too few strips anywhere (its
// other holders are away) there is nothing to recover, and the epoch's
// recovery completes instead of retrying forever.
func TestECRecoveryRebuildsOrGivesUp(t *testing.T) {
	ctx := context.Background()
	var nodes []placement.Node
	stores := map[string]*store.Disk{}
	for i := range 3 {
		a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)}), 7000)
		nodes = append(nodes, placement.Node{ID: fmt.Sprint("n", i), Addr: a, Zone: uint32(i + 1), Weight: 1 << 40})
		d, err := store.Open(filepath.Join(t.TempDir(), fmt.Sprint("n", i)), store.Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		stores[a.String()] = d
	}
	e := &Epoch{Epoch: 2, Ring: placement.New(nodes, placement.Options{}), Members: nodes}
	red := proto.Redundancy{Copies: 6, Data: 4, Parity: 2}
	const size = 64 << 10
	sh := Shape{Red: red, Size: size}
	codec, err := erasure.New(4, 2)
	if err != nil {
		t.Fatal(err)
	}
	self := nodes[0]
	local := stores[self.Addr.String()]
	remote := remoteStores{}
	for a, d := range stores {
		if a != self.Addr.String() {
			remote[a] = d
		}
	}
	other := stores[nodes[1].Addr.String()]

	// place puts strips of oid (except those n0 must hold) on n1.
	place := func(oid proto.OID, howMany int) [][]byte {
		data := make([]byte, size)
		r := rand.New(rand.NewPCG(uint64(oid), 2))
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		strips, err := codec.EncodeRange(data)
		if err != nil {
			t.Fatal(err)
		}
		put := 0
		for i, n := range targetsOf(e, oid, sh) {
			if n.ID == self.ID || put == howMany {
				continue
			}
			if err := other.Create(ctx, store.StripKey(oid, uint8(i)), size/4, 0, strips[i], store.WriteOpts{Epoch: 1}); err != nil {
				t.Fatal(err)
			}
			put++
		}
		return strips
	}
	good, lost, torn := proto.DataOID(5, 1), proto.DataOID(5, 2), proto.DataOID(5, 3)
	goodStrips := place(good, 4)
	place(lost, 3)
	// torn: every strip written at epoch 1, then one of n0's strips alone
	// rewritten at epoch 2 (a write that stopped half way): too few to
	// decode at epoch 2, so n0 must roll it back to the epoch-1 version.
	tornStrips := place(torn, 6)
	tornIdx := -1
	for i, n := range targetsOf(e, torn, sh) {
		if n.ID != self.ID {
			continue
		}
		wo := store.WriteOpts{Epoch: 1}
		data := tornStrips[i]
		if tornIdx < 0 {
			tornIdx, wo.Epoch, data = i, 2, bytes.Repeat([]byte{0xee}, size/4)
		}
		if err := local.Create(ctx, store.StripKey(torn, uint8(i)), size/4, 0, data, wo); err != nil {
			t.Fatal(err)
		}
	}
	if tornIdx < 0 {
		t.Fatal("n0 holds no strip of the torn object")
	}

	r := New(Config{
		Self: self.ID, Local: local, Remote: remote,
		Shape:    func(proto.OID) (Shape, bool, bool) { return sh, true, false },
		Codec:    func(d, p int) (Codec, error) { return erasure.New(d, p) },
		StateDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler),
	})
	defer r.Close()
	r.Start(e)
	deadline := time.Now().Add(30 * time.Second)
	for !r.Complete() {
		if time.Now().After(deadline) {
			t.Fatalf("recovery did not complete: %+v", r.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	st := r.Status()
	t.Logf("status: %+v", st)
	if st.Failed != 0 {
		t.Errorf("%d recovery attempts failed", st.Failed)
	}
	for i, n := range targetsOf(e, good, sh) {
		if n.ID != self.ID {
			continue
		}
		got := make([]byte, size/4)
		if err := local.Read(ctx, store.StripKey(good, uint8(i)), 0, got); err != nil {
			t.Fatalf("rebuilt strip %d: %v", i, err)
		}
		if !bytes.Equal(got, goodStrips[i]) {
			t.Fatalf("rebuilt strip %d differs", i)
		}
		t.Logf("strip %d of %s rebuilt from 4 siblings", i, good)
	}
	got := make([]byte, size/4)
	if err := local.Read(ctx, store.StripKey(torn, uint8(tornIdx)), 0, got); err != nil || !bytes.Equal(got, tornStrips[tornIdx]) {
		t.Fatalf("torn strip %d not rolled back to the decodable version (err %v)", tornIdx, err)
	}
	t.Logf("strip %d of %s, alone at a newer epoch, rolled back", tornIdx, torn)
	for i, n := range targetsOf(e, lost, sh) {
		if n.ID != self.ID {
			continue
		}
		if _, err := local.Stat(ctx, store.StripKey(lost, uint8(i))); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("strip %d of the unrecoverable object: stat err %v, want not found", i, err)
		}
	}
}
