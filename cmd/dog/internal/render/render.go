// Package render prints dog's tables exactly as sheepdog's dog does, in its
// human layout and in its raw layout (-r: no headers, single spaces, sizes
// in bytes, times in seconds since the epoch). Every function is a pure
// function of its input, so the layouts are tested with golden files.
package render

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gosheep/gosheep/units"
)

// Options select the layout.
type Options struct {
	Raw bool
	Loc *time.Location // time zone of printed times; nil is time.Local
}

func (o Options) loc() *time.Location {
	if o.Loc == nil {
		return time.Local
	}
	return o.Loc
}

func (o Options) size(n uint64) string { return units.Format(n, o.Raw) }

// errWriter remembers the first write error so the table code can ignore it.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, a ...any) {
	if e.err == nil {
		_, e.err = fmt.Fprintf(e.w, format, a...)
	}
}

// VDI is one row of `dog vdi list`.
type VDI struct {
	Name       string    `json:"name"`
	SnapID     uint32    `json:"snap_id"` // snapshot id; 0 for a working VDI
	Snapshot   bool      `json:"snapshot"`
	Clone      bool      `json:"clone"`
	Size       uint64    `json:"size"`
	Used       uint64    `json:"used"`   // bytes of objects the VDI owns
	Shared     uint64    `json:"shared"` // bytes of objects it shares with ancestors
	Created    time.Time `json:"created"`
	VID        uint32    `json:"vid"`
	Redundancy string    `json:"redundancy"` // "3" or "4:2"
	Tag        string    `json:"tag"`
	BSS        uint8     `json:"block_size_shift"`
}

// VDIList prints `dog vdi list`.
func VDIList(w io.Writer, rows []VDI, o Options) error {
	e := &errWriter{w: w}
	if !o.Raw {
		e.printf("  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift\n")
	}
	for _, r := range rows {
		mark := ' '
		if o.Raw {
			mark = '='
		}
		switch {
		case r.Snapshot:
			mark = 's'
		case r.Clone:
			mark = 'c'
		}
		if o.Raw {
			e.printf("%c %s %d %s %s %s %d %x %s %s %d\n", mark, escapeName(r.Name), r.SnapID,
				o.size(r.Size), o.size(r.Used), o.size(r.Shared), r.Created.Unix(), r.VID, r.Redundancy, r.Tag, r.BSS)
			continue
		}
		e.printf("%c %-8s %5d %7s %7s %7s %s  %7x %6s %13s %3d\n", mark, r.Name, r.SnapID,
			o.size(r.Size), o.size(r.Used), o.size(r.Shared), r.Created.In(o.loc()).Format("2006-01-02 15:04"),
			r.VID, r.Redundancy, r.Tag, r.BSS)
	}
	return e.err
}

// escapeName escapes blanks and backslashes in raw output, as sheepdog
// does, so that names split on spaces reliably.
func escapeName(s string) string {
	var b strings.Builder
	for _, c := range s {
		if c == '\\' || c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r' {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// Node is one row of `dog node list`.
type Node struct {
	ID     int    `json:"id"`
	Addr   string `json:"addr"` // host:port
	Vnodes int    `json:"vnodes"`
	Zone   uint32 `json:"zone"`
	Self   bool   `json:"self"`   // the node dog talks to
	Status string `json:"status"` // gossip status: alive, failed, left
	Role   string `json:"role"`   // raft role: leader, voter, nonvoter
}

// NodeList prints `dog node list`. The node dog talks to is marked with a
// '*' in the margin; verbose adds the gossip status and Raft role.
func NodeList(w io.Writer, nodes []Node, verbose bool, o Options) error {
	e := &errWriter{w: w}
	if !o.Raw {
		if verbose {
			e.printf("  Id   Host:Port         V-Nodes       Zone  Status  Role\n")
		} else {
			e.printf("  Id   Host:Port         V-Nodes       Zone\n")
		}
	}
	for _, n := range nodes {
		if o.Raw {
			if verbose {
				e.printf("%d %s %d %d %s %s\n", n.ID, n.Addr, n.Vnodes, n.Zone, n.Status, n.Role)
			} else {
				e.printf("%d %s %d %d\n", n.ID, n.Addr, n.Vnodes, n.Zone)
			}
			continue
		}
		mark := " "
		if n.Self {
			mark = "*"
		}
		e.printf("%s%3d   %-20s\t%2d%11d", mark, n.ID, n.Addr, n.Vnodes, n.Zone)
		if verbose {
			e.printf("  %-6s  %s", n.Status, n.Role)
		}
		e.printf("\n")
	}
	return e.err
}

// NodeUsage is one row of `dog node info`.
type NodeUsage struct {
	ID    int
	Size  uint64
	Used  uint64
	Avail uint64
}

func percent(used, size uint64) int {
	if size == 0 {
		return 0
	}
	return int(float64(used) / float64(size) * 100)
}

// NodeInfo prints `dog node info`: per-node capacity, then totals and the
// total size of the working VDIs.
func NodeInfo(w io.Writer, nodes []NodeUsage, vdiTotal uint64, o Options) error {
	e := &errWriter{w: w}
	if !o.Raw {
		e.printf("Id\tSize\tUsed\tAvail\tUse%%\n")
	}
	var size, used, avail uint64
	for _, n := range nodes {
		size += n.Size
		used += n.Used
		avail += n.Avail
		if o.Raw {
			e.printf("%d %s %s %s %d%%\n", n.ID, o.size(n.Size), o.size(n.Used), o.size(n.Avail), percent(n.Used, n.Size))
		} else {
			e.printf("%2d\t%s\t%s\t%s\t%3d%%\n", n.ID, o.size(n.Size), o.size(n.Used), o.size(n.Avail), percent(n.Used, n.Size))
		}
	}
	if o.Raw {
		e.printf("Total %s %s %s %d%% %s\n", o.size(size), o.size(used), o.size(avail), percent(used, size), o.size(vdiTotal))
	} else {
		e.printf("Total\t%s\t%s\t%s\t%3d%%\n\nTotal virtual image size\t%s\n", o.size(size), o.size(used), o.size(avail), percent(used, size), o.size(vdiTotal))
	}
	return e.err
}

// EpochNode is a member of an epoch.
type EpochNode struct {
	Addr   string `json:"addr"`
	Vnodes int    `json:"vnodes"`
}

// Epoch is one entry of the epoch history.
type Epoch struct {
	Epoch uint32      `json:"epoch"`
	Time  time.Time   `json:"time"`
	Nodes []EpochNode `json:"nodes"`
}

// ClusterInfo is what `dog cluster info` shows.
type ClusterInfo struct {
	Status     string    // "running, auto-recovery enabled", or why not
	Formatted  bool      // false: no store line, no creation time
	Store      string    // backend store name
	Redundancy string    // default redundancy, "3" or "4:2"
	Created    time.Time // format time
	Epochs     []Epoch   // newest first
	Extra      []string  // gosheep's verbose lines (leader, flags...)
}

// Cluster prints `dog cluster info`; diff shows each epoch's changes
// instead of its members, as `dog cluster info -d`.
func Cluster(w io.Writer, ci ClusterInfo, verbose, diff bool, o Options) error {
	e := &errWriter{w: w}
	if !o.Raw {
		e.printf("Cluster status: ")
	}
	e.printf("%s\n", ci.Status)
	if verbose {
		if !o.Raw {
			e.printf("Cluster store: ")
		}
		if ci.Formatted {
			e.printf("%s with %s redundancy policy\n", ci.Store, ci.Redundancy)
			if !o.Raw {
				e.printf("Cluster vnodes strategy: ")
			}
			e.printf("auto\n")
		} else {
			e.printf("%s\n", ci.Status)
		}
		if !o.Raw {
			e.printf("Cluster vnode mode: ")
		}
		e.printf("node\n")
		for _, x := range ci.Extra {
			e.printf("%s\n", x)
		}
	} else {
		e.printf("\n")
	}
	if !o.Raw && ci.Formatted {
		// C's ctime() ends with a newline, hence the blank line.
		e.printf("Cluster created at %s\n\n", ci.Created.In(o.loc()).Format("Mon Jan _2 15:04:05 2006"))
		e.printf("Epoch Time           Version [Host:Port:V-Nodes,,,]\n")
	}
	for i, ep := range ci.Epochs {
		if o.Raw {
			e.printf("%d %d", ep.Time.Unix(), ep.Epoch)
		} else {
			e.printf("%s %6d", ep.Time.In(o.loc()).Format("2006-01-02 15:04:05"), ep.Epoch)
		}
		e.printf(" [")
		switch {
		case !diff:
			for j, n := range ep.Nodes {
				if j > 0 {
					e.printf(", ")
				}
				e.printf("%s:%d", n.Addr, n.Vnodes)
			}
		case i == len(ci.Epochs)-1:
			e.printf("formated") // sic: sheepdog's spelling, kept for scripts
		default:
			e.printf("%s", epochDiff(ep.Nodes, ci.Epochs[i+1].Nodes))
		}
		e.printf("]\n")
	}
	return e.err
}

// epochDiff lists the nodes that joined (+) and left (-) since prev.
func epochDiff(cur, prev []EpochNode) string {
	in := func(list []EpochNode, addr string) bool {
		for _, n := range list {
			if n.Addr == addr {
				return true
			}
		}
		return false
	}
	var parts []string
	for _, n := range cur {
		if !in(prev, n.Addr) {
			parts = append(parts, "+"+n.Addr)
		}
	}
	for _, n := range prev {
		if !in(cur, n.Addr) {
			parts = append(parts, "-"+n.Addr)
		}
	}
	return strings.Join(parts, ", ")
}

// Recovery is one node's row of `dog node recovery`.
type Recovery struct {
	ID     int    `json:"id"`
	Addr   string `json:"addr"`
	Vnodes int    `json:"vnodes"`
	Zone   uint32 `json:"zone"`
	Active bool   `json:"active"`
	Done   uint64 `json:"done"`  // objects recovered
	Total  uint64 `json:"total"` // objects to recover
}

// RecoveryList prints `dog node recovery`: the nodes in recovery.
func RecoveryList(w io.Writer, rows []Recovery, o Options) error {
	e := &errWriter{w: w}
	if !o.Raw {
		e.printf("Nodes In Recovery:\n")
		e.printf("  Id   Host:Port         V-Nodes       Zone       Progress\n")
	}
	for _, r := range rows {
		if !r.Active {
			continue
		}
		if o.Raw {
			e.printf("%d %s %d %d %d %d\n", r.ID, r.Addr, r.Vnodes, r.Zone, r.Done, r.Total)
			continue
		}
		pct := 0.0
		if r.Total > 0 {
			pct = 100 * float64(r.Done) / float64(r.Total)
		}
		e.printf("%4d   %-20s%5d%11d%11.1f%%\n", r.ID, r.Addr, r.Vnodes, r.Zone, pct)
	}
	return e.err
}

// TreeVDI is a VDI for `dog vdi tree`, in the order VDIs are added.
type TreeVDI struct {
	Name    string
	VID     uint32
	Parent  uint32 // parent vid; a parent of another name starts a new tree
	Created time.Time
	Current bool // a working VDI: "(you are here)"
}

type treeNode struct {
	v        TreeVDI
	label    string
	children []*treeNode
}

// Tree prints `dog vdi tree`: each name's snapshots as a tree whose
// branches are rollbacks, the working VDI marked "(you are here)".
func Tree(w io.Writer, vdis []TreeVDI, o Options) error {
	nodes := make(map[uint32]*treeNode, len(vdis))
	for _, v := range vdis {
		label := "(you are here)"
		if !v.Current {
			label = v.Created.In(o.loc()).Format("[2006-01-02 15:04]")
		}
		nodes[v.VID] = &treeNode{v: v, label: label}
	}
	var roots []*treeNode
	for _, v := range vdis {
		n := nodes[v.VID]
		if p, ok := nodes[v.Parent]; ok && v.Parent != v.VID && p.v.Name == v.Name && !isAncestor(nodes, v.VID, v.Parent) {
			p.children = append(p.children, n)
		} else {
			roots = append(roots, n)
		}
	}
	e := &errWriter{w: w}
	t := &treePrinter{e: e}
	for _, r := range roots {
		e.printf("%s", r.v.Name)
		t.width = []int{len(r.v.Name)}
		t.more = []bool{false}
		t.dump(r, 1, true, true)
	}
	return e.err
}

// isAncestor reports whether vid is an ancestor of (or is) start, which
// would make a parent link a cycle; hostile or broken tables are printed
// as separate trees instead of looping.
func isAncestor(nodes map[uint32]*treeNode, vid, start uint32) bool {
	for cur, i := start, 0; i <= len(nodes); i++ {
		if cur == vid {
			return true
		}
		n, ok := nodes[cur]
		if !ok {
			return false
		}
		cur = n.v.Parent
	}
	return true
}

type treePrinter struct {
	e     *errWriter
	width []int
	more  []bool
}

func (t *treePrinter) dump(n *treeNode, level int, first, last bool) {
	t.indent(level, first, last)
	t.e.printf("%s", n.label)
	if len(n.children) == 0 {
		t.e.printf("\n")
		return
	}
	for len(t.width) <= level {
		t.width = append(t.width, 0)
		t.more = append(t.more, false)
	}
	t.more[level] = !last
	t.width[level] = len(n.label)
	for i, c := range n.children {
		t.dump(c, level+1, i == 0, i == len(n.children)-1)
	}
}

func (t *treePrinter) indent(level int, first, last bool) {
	if first {
		if last {
			t.e.printf("---")
		} else {
			t.e.printf("-+-")
		}
		return
	}
	for lvl := 0; lvl < level-1; lvl++ {
		t.e.printf("%s", strings.Repeat(" ", t.width[lvl]+1))
		if t.more[lvl+1] {
			t.e.printf("| ")
		} else {
			t.e.printf("  ")
		}
	}
	t.e.printf("%s", strings.Repeat(" ", t.width[level-1]+1))
	if last {
		t.e.printf("`-")
	} else {
		t.e.printf("|-")
	}
}

// Holder is what one node has of an object.
type Holder struct {
	Addr   string   `json:"addr"`
	Strips []int    `json:"strips,omitempty"` // EC strips held (nil for a replicated object)
	Live   bool     `json:"live"`             // holds a live copy (or strip)
	Stale  []uint32 `json:"stale,omitempty"`  // epochs of stale copies kept for recovery
	Err    string   `json:"error,omitempty"`  // the node could not be asked
}

// Location is what `dog vdi object` prints about one object.
type Location struct {
	OID       string   `json:"oid,omitempty"`
	VID       uint32   `json:"vid"`
	Index     uint32   `json:"index"`
	Inode     bool     `json:"inode"`     // the inode object rather than data object Index
	Allocated bool     `json:"allocated"` // data object: the index entry is set
	Copies    int      `json:"copies"`
	EC        bool     `json:"erasure_coded"`
	Epoch     uint32   `json:"epoch"`
	Nodes     int      `json:"nodes"`    // data nodes in the epoch
	Holders   []Holder `json:"holders"`  // one per node of the epoch
	Expected  []string `json:"expected"` // nodes the ring places the copies (strips in order) on
}

// ObjectLocation prints `dog vdi object`: which nodes hold an object and
// where the placement ring wants it.
func ObjectLocation(w io.Writer, l Location) error {
	e := &errWriter{w: w}
	switch {
	case l.Inode:
		e.printf("Looking for the inode object 0x%x with %d nodes\n\n", l.VID, l.Nodes)
	case !l.Allocated:
		e.printf("The inode object 0x%x idx %d is not allocated\n", l.VID, l.Index)
		return e.err
	default:
		e.printf("Looking for the object %s (vid 0x%x idx %d, %d copies) with %d nodes\n\n", l.OID, l.VID, l.Index, l.Copies, l.Nodes)
	}
	for _, h := range l.Holders {
		switch {
		case h.Err != "":
			e.printf("%s: hit an unexpected error (%s)\n", h.Addr, h.Err)
		case h.Live && l.EC:
			e.printf("%s has strip %s of the object\n", h.Addr, joinInts(h.Strips))
		case h.Live:
			e.printf("%s has the object\n", h.Addr)
		default:
			e.printf("%s doesn't have the object\n", h.Addr)
		}
		for _, s := range h.Stale {
			e.printf("%s keeps a stale copy from epoch %d\n", h.Addr, s)
		}
	}
	if l.Nodes < l.Copies {
		e.printf("\nBecause number of nodes (%d) is less than number of copies (%d), the object should be located at every nodes.\n", l.Nodes, l.Copies)
		return e.err
	}
	e.printf("\nAccording to the placement ring of epoch %d, the object should be located at:\n%s\n", l.Epoch, strings.Join(l.Expected, " "))
	return e.err
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ",")
}

// ObjectMap prints `dog vdi object map`: the allocated index entries.
func ObjectMap(w io.Writer, index []uint32, only int64) error {
	e := &errWriter{w: w}
	e.printf("Index       VID\n")
	for i, vid := range index {
		if (only >= 0 && int64(i) == only) || (only < 0 && vid != 0) {
			e.printf("%08d %8x\n", i, vid)
		}
	}
	return e.err
}
