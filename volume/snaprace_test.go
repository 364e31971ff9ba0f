package volume

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/proto"
)

// hookObjects runs hook once, right before the first write to an inode's
// data_vdi_id lands: the window in which a snapshot taken on another node
// copies the index without that entry.
type hookObjects struct {
	*memObjects
	once sync.Once
	hook func()
}

func (h *hookObjects) Write(ctx context.Context, o gateway.Object, off uint32, data []byte, sync bool) error {
	if o.OID.IsInode() && off >= proto.InodeIndexOffset && h.hook != nil {
		h.once.Do(h.hook)
	}
	return h.memObjects.Write(ctx, o, off, data, sync)
}

// TestSnapshotDuringAllocationKeepsWrite: a device allocates an object and
// updates the index while another node's manager snapshots the VDI and
// copies the index in between. The acknowledged write must be in the new
// working VDI (the device redoes it there), not only in the snapshot.
// With oldLeader, the leader predates CmdCheckWorking and the writer
// falls back to reading its own VDI table after a commit.
func TestSnapshotDuringAllocationKeepsWrite(t *testing.T) {
	for _, c := range []struct{ whole, oldLeader bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		whole := c.whole
		ctx := context.Background()
		a, objs := setup(t)
		meta := a.cfg.Meta.(*fsmMeta)
		meta.oldLeader = c.oldLeader
		// b is another node's manager over the same metadata and objects.
		b := NewManager(Config{Meta: meta, Objects: objs})
		hooked := &hookObjects{memObjects: objs}
		a.cfg.Objects = hooked
		if _, err := a.Create(ctx, CreateOpts{Name: "v", Size: 4 * mib}); err != nil {
			t.Fatal(err)
		}
		d, err := a.Open(ctx, "v")
		if err != nil {
			t.Fatal(err)
		}
		var snapErr error
		hooked.hook = func() { _, snapErr = b.Snapshot(ctx, "v", "s1") }
		data, off := random(4096), uint64(mib+512)
		if whole {
			data, off = random(mib), mib
		}
		if err := d.WriteAt(ctx, data, off, false); err != nil {
			t.Fatalf("write: %v", err)
		}
		if snapErr != nil {
			t.Fatalf("snapshot: %v", snapErr)
		}
		fresh, err := b.Open(ctx, "v")
		if err != nil {
			t.Fatal(err)
		}
		if got := mustRead(t, fresh, off, len(data)); !bytes.Equal(got, data) {
			t.Fatalf("whole=%v, old leader=%v: acknowledged write missing from the working vdi after a concurrent snapshot", whole, c.oldLeader)
		}
		t.Logf("verified (whole object=%v, old leader=%v): the write acknowledged across a concurrent snapshot reads back from the new working vdi", whole, c.oldLeader)
	}
}
