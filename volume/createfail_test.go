package volume

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/gosheep/gosheep/gateway"
	"github.com/gosheep/gosheep/proto"
)

// noSpaceInodes refuses, while full, to create inode objects, as a cluster
// with a full copy holder does.
type noSpaceInodes struct {
	*memObjects
	full atomic.Bool
}

func (n *noSpaceInodes) CreateExclusive(ctx context.Context, o gateway.Object, off uint32, data []byte, sync bool) error {
	if n.full.Load() && o.OID.IsInode() {
		return fmt.Errorf("%s: %w", o.OID, proto.ResNoSpace)
	}
	return n.memObjects.CreateExclusive(ctx, o, off, data, sync)
}

// TestFailedCreateLeavesNoVDI: a create (or clone) whose inode cannot be
// written fails with the cause and leaves no VDI behind, so `vdi list`
// agrees with the error and a retry is not refused as "VDI exists".
func TestFailedCreateLeavesNoVDI(t *testing.T) {
	ctx := context.Background()
	failing := &noSpaceInodes{memObjects: newMemObjects()}
	m := setupWith(t, failing)
	if _, err := m.Create(ctx, CreateOpts{Name: "base", Size: 8 * mib}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Snapshot(ctx, "base", "s1"); err != nil {
		t.Fatal(err)
	}
	failing.full.Store(true)

	for _, c := range []struct {
		name string
		do   func() error
	}{
		{"create", func() error { _, err := m.Create(ctx, CreateOpts{Name: "v", Size: 8 * mib}); return err }},
		{"clone", func() error { _, err := m.Clone(ctx, "base", "s1", 0, "v", 0); return err }},
	} {
		if err := c.do(); !errors.Is(err, proto.ResNoSpace) {
			t.Fatalf("%s with no space for the inode: %v, want ResNoSpace", c.name, err)
		}
		if _, err := m.LookupSync(ctx, "v", "", 0); !errors.Is(err, proto.ResNoVDI) {
			t.Fatalf("after a failed %s, lookup of the VDI: %v, want ResNoVDI", c.name, err)
		}
	}

	failing.full.Store(false)
	if _, err := m.Create(ctx, CreateOpts{Name: "v", Size: 8 * mib}); err != nil {
		t.Fatalf("create once space is back: %v", err)
	}
}
