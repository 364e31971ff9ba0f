package volume

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/proto"
)

// readHookObjects runs hook once, right before the first read of an
// inode's index: while a device is being opened, between its lookup of
// the VDI and its registration for change notices.
type readHookObjects struct {
	*memObjects
	once sync.Once
	hook func()
}

func (h *readHookObjects) Read(ctx context.Context, o gateway.Object, off uint32, p []byte) error {
	if o.OID.IsInode() && off >= proto.InodeIndexOffset && h.hook != nil {
		h.once.Do(h.hook)
	}
	return h.memObjects.Read(ctx, o, off, p)
}

// A device opened while its VDI is snapshotted or resized through another
// node must not miss the change: it would go on writing in place into
// what became the snapshot, or report the old size for good (an iSCSI
// target exported while its VDI grew did, in CI).
func TestOpenDuringChange(t *testing.T) {
	for _, change := range []string{"snapshot", "resize"} {
		t.Run(change, func(t *testing.T) {
			ctx := context.Background()
			a, objs := setup(t)
			b := NewManager(Config{Meta: a.cfg.Meta, Objects: objs})
			if _, err := a.Create(ctx, CreateOpts{Name: "v", Size: 4 * mib}); err != nil {
				t.Fatal(err)
			}
			before := random(4096)
			d0, err := a.Open(ctx, "v")
			if err != nil {
				t.Fatal(err)
			}
			if err := d0.WriteAt(ctx, before, 0, false); err != nil {
				t.Fatal(err)
			}
			d0.Close()
			hooked := &readHookObjects{memObjects: objs}
			a.cfg.Objects = hooked
			var herr error
			hooked.hook = func() {
				if change == "snapshot" {
					_, herr = b.Snapshot(ctx, "v", "s1")
				} else {
					_, herr = b.Resize(ctx, "v", 8*mib)
				}
			}
			d, err := a.Open(ctx, "v")
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if herr != nil {
				t.Fatalf("%s: %v", change, herr)
			}
			if change == "resize" {
				if got := d.Size(); got != 8*mib {
					t.Fatalf("device opened during a resize reports %d bytes, want %d", got, 8*mib)
				}
				return
			}
			after := random(4096)
			if err := d.WriteAt(ctx, after, 0, false); err != nil {
				t.Fatal(err)
			}
			snap, err := b.OpenSnapshot(ctx, "v", "s1", 0)
			if err != nil {
				t.Fatal(err)
			}
			if got := mustRead(t, snap, 0, 4096); !bytes.Equal(got, before) {
				t.Fatal("a write through a device opened during the snapshot changed the snapshot")
			}
			work, err := b.Open(ctx, "v")
			if err != nil {
				t.Fatal(err)
			}
			if got := mustRead(t, work, 0, 4096); !bytes.Equal(got, after) {
				t.Fatal("the write is missing from the working vdi")
			}
		})
	}
}
