package sheep

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/target/iscsi"
	"github.com/gosheep/gosheep/target/nbd"
	"github.com/gosheep/gosheep/volume"
)

// frontEnds are the iSCSI, NBD and metrics listeners of a node.
type frontEnds struct {
	iscsi     *iscsi.Server
	nbd       *nbd.Server
	http      *http.Server
	listeners []net.Listener
	unsub     func()
	// exportMu orders changes to the iSCSI targets: the catalog watcher's
	// and those a login makes (resolveISCSI). It is not held while a
	// device is opened.
	exportMu sync.Mutex
}

// portNumber is this node's number in the cluster (cluster.State.PortNumber),
// its iSCSI portal group tag and relative target port identifier.
func (d *Daemon) portNumber() (n uint16, ok bool) {
	d.node.FSM().Read(func(s *cluster.State) { n, ok = s.PortNumber(d.node.ID()) })
	return n, ok
}

// startFrontEnds starts iSCSI, NBD and metrics listeners as configured.
func (d *Daemon) startFrontEnds() error {
	fe := &d.fe
	if d.cfg.ISCSI != "" {
		ln, err := net.Listen("tcp", d.cfg.ISCSI)
		if err != nil {
			return fmt.Errorf("iscsi listen on %s: %w", d.cfg.ISCSI, err)
		}
		fe.listeners = append(fe.listeners, ln)
		fe.iscsi = iscsi.New(iscsi.Config{
			Logger: d.log.With("frontend", "iscsi"), Recorder: d.recorder(), AdvertiseAddrs: []string{ln.Addr().String()},
			PortID: d.node.ID(), Reservations: clusterResv{d}, PortNumber: d.portNumber,
			Resolve: d.resolveISCSI,
		})
		d.h.waitAborts = fe.iscsi.WaitAborts
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if err := fe.iscsi.Serve(d.ctx, ln); err != nil && d.ctx.Err() == nil {
				d.log.Error("iscsi server stopped", "err", err)
			}
		}()
		// Follow the catalog: events for prompt changes, and a periodic
		// reconcile so a target whose export failed (its inode not yet
		// readable, a peer timing out) is retried until it exists.
		events, unsub := d.vols.Subscribe()
		fe.unsub = unsub
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			t := time.NewTicker(2 * time.Second)
			defer t.Stop()
			d.reconcileISCSI()
			for {
				select {
				case ev, ok := <-events:
					if !ok {
						return
					}
					d.onVolumeEvent(ev)
				case <-t.C:
					d.reconcileISCSI()
				case <-d.ctx.Done():
					return
				}
			}
		}()
	}
	if d.cfg.NBD != "" {
		ln, err := net.Listen("tcp", d.cfg.NBD)
		if err != nil {
			return fmt.Errorf("nbd listen on %s: %w", d.cfg.NBD, err)
		}
		fe.listeners = append(fe.listeners, ln)
		fe.nbd = nbd.New(nbd.Config{Exports: nbdExports{d.vols}, Logger: d.log.With("frontend", "nbd"), Recorder: d.recorder()})
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if err := fe.nbd.Serve(d.ctx, ln); err != nil && d.ctx.Err() == nil {
				d.log.Error("nbd server stopped", "err", err)
			}
		}()
	}
	if d.cfg.Metrics != "" {
		ln, err := net.Listen("tcp", d.cfg.Metrics)
		if err != nil {
			return fmt.Errorf("metrics listen on %s: %w", d.cfg.Metrics, err)
		}
		fe.listeners = append(fe.listeners, ln)
		mux := http.NewServeMux()
		mux.Handle("/metrics", d.metricsHandler())
		fe.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if err := fe.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("metrics server stopped", "err", err)
			}
		}()
	}
	return nil
}

func (d *Daemon) stopFrontEnds() {
	fe := &d.fe
	if fe.unsub != nil {
		fe.unsub()
	}
	if fe.iscsi != nil {
		fe.iscsi.Close()
	}
	if fe.nbd != nil {
		fe.nbd.Close()
	}
	if fe.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fe.http.Shutdown(ctx)
		cancel()
	}
	for _, ln := range fe.listeners {
		ln.Close()
	}
}

func iscsiCHAP(c *cluster.CHAP) *iscsi.CHAP {
	if c == nil {
		return nil
	}
	return &iscsi.CHAP{User: c.User, Secret: c.Secret, MutualUser: c.MutualUser, MutualSecret: c.MutualSecret}
}

// exportISCSI adds the target of info unless it is there. The device is
// opened without exportMu (reading its index can take a while); the
// target is added under it, and only if the VDI is still the one to
// export then: a removal ordered meanwhile (under exportMu) wins.
func (d *Daemon) exportISCSI(info volume.Info) {
	if slices.Contains(d.fe.iscsi.Targets(), info.Name) {
		return
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
	defer cancel()
	dev, err := d.vols.Open(ctx, info.Name)
	if took := time.Since(start); took > 5*time.Second {
		d.log.Warn("iscsi: opening a volume to export took long", "vdi", info.Name, "took", took, "err", err)
	}
	if err != nil {
		d.log.Warn("iscsi: cannot open volume", "vdi", info.Name, "err", err)
		return
	}
	d.fe.exportMu.Lock()
	defer d.fe.exportMu.Unlock()
	list := d.vols.List()
	i := slices.IndexFunc(list, func(v volume.Info) bool { return v.Name == info.Name && v.RootVID == info.RootVID })
	if i < 0 || slices.Contains(d.fe.iscsi.Targets(), info.Name) {
		dev.Close() // deleted meanwhile, or exported by another caller
		return
	}
	cur := list[i]
	// With its CHAP secrets from the start: never a moment without them.
	if err := d.fe.iscsi.AddTarget(iscsi.TargetSpec{Name: info.Name, VID: info.RootVID, Device: dev, CHAP: iscsiCHAP(cur.CHAP)}); err != nil {
		d.log.Warn("iscsi: cannot add target", "vdi", info.Name, "err", err)
		dev.Close()
		return
	}
	// After AddTarget: a change applied meanwhile was installed by the
	// watcher or is in this state.
	d.node.FSM().Read(func(s *cluster.State) { d.installResv(s, info.RootVID) })
}

// reconcileISCSI exports every working VDI that has no target yet and
// removes targets whose VDI is gone.
func (d *Daemon) reconcileISCSI() {
	if !d.isReplayed() {
		return
	}
	have := map[string]bool{}
	for _, name := range d.fe.iscsi.Targets() {
		have[name] = true
	}
	for _, info := range d.vols.List() {
		if !have[info.Name] {
			d.exportISCSI(info)
		}
	}
	d.fe.exportMu.Lock()
	defer d.fe.exportMu.Unlock()
	want := map[string]bool{}
	for _, info := range d.vols.List() {
		want[info.Name] = true
	}
	for _, name := range d.fe.iscsi.Targets() {
		if !want[name] {
			d.fe.iscsi.RemoveTarget(name)
		}
	}
}

// onVolumeEvent keeps the front ends in step with the VDI table.
func (d *Daemon) onVolumeEvent(ev volume.Event) {
	switch ev.Kind {
	case volume.Added:
		if d.fe.iscsi != nil && d.isReplayed() {
			d.exportISCSI(ev.Info)
		}
	case volume.Removed:
		if d.fe.iscsi != nil {
			d.fe.exportMu.Lock()
			d.fe.iscsi.RemoveTarget(ev.Info.Name)
			d.fe.exportMu.Unlock()
		}
		if d.fe.nbd != nil {
			d.fe.nbd.Drop(ev.Info.Name)
		}
	case volume.Resized:
		if d.fe.iscsi != nil {
			d.fe.iscsi.Resized(ev.Info.Name)
		}
	case volume.Updated:
		if d.fe.iscsi != nil {
			// Under exportMu: an export adding the target meanwhile takes
			// the secrets from the table after this change, or this
			// finds its target.
			d.fe.exportMu.Lock()
			d.fe.iscsi.SetCHAP(ev.Info.Name, iscsiCHAP(ev.Info.CHAP))
			d.fe.exportMu.Unlock()
		}
	}
}

// resolveISCSI exports, before an initiator is told it does not exist, a
// VDI that was created through another node a moment ago: this node may
// not have applied its creation yet, and the watcher exports it only
// after that. It catches up with the cluster first (a Raft round trip),
// then exports iqn's VDI, or for "" (discovery) every missing one.
func (d *Daemon) resolveISCSI(ctx context.Context, iqn string) {
	if !d.isReplayed() {
		return
	}
	if err := d.vols.CatchUp(ctx); err != nil {
		d.log.Debug("iscsi: cannot catch up with the cluster to resolve a target", "iqn", iqn, "err", err)
		return
	}
	if iqn == "" {
		d.reconcileISCSI()
		return
	}
	for _, info := range d.vols.List() {
		if iscsi.IQN(info.Name) == iqn {
			d.exportISCSI(info)
			return
		}
	}
}

// nbdExports serves every working VDI (and snapshots as NAME@TAG, read-only).
type nbdExports struct{ vols *volume.Manager }

func (e nbdExports) List(ctx context.Context) ([]nbd.ExportInfo, error) {
	// Catch up first, as iSCSI discovery does: a VDI created through
	// another node a moment ago is listed. Best effort: a node cut off
	// from the quorum still lists what it knows.
	e.vols.CatchUp(ctx)
	var out []nbd.ExportInfo
	for _, v := range e.vols.List() {
		out = append(out, nbd.ExportInfo{Name: v.Name, Description: fmt.Sprintf("gosheep vdi %s (%d bytes)", v.Name, v.Size)})
	}
	return out, nil
}

func (e nbdExports) Open(ctx context.Context, name string) (volume.Device, nbd.ExportInfo, error) {
	if base, tag, ok := cutSnapshot(name); ok {
		dev, err := e.vols.OpenSnapshot(ctx, base, tag, 0)
		return dev, nbd.ExportInfo{Name: name, ReadOnly: true}, err
	}
	dev, err := e.vols.Open(ctx, name)
	return dev, nbd.ExportInfo{Name: name}, err
}

// cutSnapshot splits "vdi@tag".
func cutSnapshot(name string) (string, string, bool) {
	for i := len(name) - 1; i > 0; i-- {
		if name[i] == '@' {
			return name[:i], name[i+1:], i+1 < len(name)
		}
	}
	return name, "", false
}
