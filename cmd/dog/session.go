package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/gosheep/gosheep/api"
	"github.com/gosheep/gosheep/client"
	"github.com/gosheep/gosheep/client/vdi"
	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/proto"
)

// conn returns the connection to the sheep dog talks to (-a/-p).
func (a *app) conn(ctx context.Context) (*client.Conn, error) { return a.connTo(ctx, a.addr()) }

// connTo returns a connection to the sheep at addr, dialled on first use.
func (a *app) connTo(ctx context.Context, addr string) (*client.Conn, error) {
	a.mu.Lock()
	c := a.conns[addr]
	a.mu.Unlock()
	if c != nil && c.Err() == nil {
		return c, nil
	}
	dctx, cancel := a.rctx(ctx)
	defer cancel()
	d := &net.Dialer{KeepAlive: 30 * time.Second}
	c, err := client.Dial(dctx, addr, client.WithDialer(d))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &connError{addr: addr, err: err}
	}
	a.mu.Lock()
	if old := a.conns[addr]; old != nil {
		old.Close()
	}
	a.conns[addr] = c
	a.mu.Unlock()
	return c, nil
}

// forget closes and drops the connection to addr.
func (a *app) forget(addr string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c := a.conns[addr]; c != nil {
		c.Close()
		delete(a.conns, addr)
	}
}

func (a *app) closeAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for addr, c := range a.conns {
		c.Close()
		delete(a.conns, addr)
	}
}

// rctx bounds one request (or a connection attempt) by --timeout.
func (a *app) rctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return withTimeout(ctx, a.timeout)
}

// withTimeout bounds ctx by d; 0 does not bound it.
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// longTimeout bounds an operation the sheep may work on for long (a check
// reads every copy of a VDI): only an explicit --timeout applies.
func (a *app) longTimeout() time.Duration {
	if a.root != nil && a.root.PersistentFlags().Changed("timeout") {
		return a.timeout
	}
	return 0
}

// timed is a vdi.Conn whose requests each get --timeout to be answered:
// a long transfer is many requests, none of which may hang.
type timed struct {
	a *app
	c *client.Conn
}

func (t timed) Do(ctx context.Context, req proto.Request, wdata, rbuf []byte) (proto.Response, []byte, error) {
	ctx, cancel := t.a.rctx(ctx)
	defer cancel()
	return t.c.Do(ctx, req, wdata, rbuf)
}

// vconn is the connection for VDI I/O.
func (a *app) vconn(ctx context.Context) (vdi.Conn, error) {
	c, err := a.conn(ctx)
	if err != nil {
		return nil, err
	}
	return timed{a: a, c: c}, nil
}

// meta calls a JSON extension op on c. A sheep that does not know the op
// (sheepdog, or an older gosheep) answers INVALID_PARMS.
func (a *app) meta(ctx context.Context, c *client.Conn, op proto.Opcode, what string, in, out any) error {
	return a.metaT(ctx, a.timeout, c, op, what, in, out)
}

// metaT is meta with its own timeout.
func (a *app) metaT(ctx context.Context, d time.Duration, c *client.Conn, op proto.Opcode, what string, in, out any) error {
	ctx, cancel := withTimeout(ctx, d)
	defer cancel()
	err := c.Meta(ctx, op, in, out)
	if errors.Is(err, proto.ResInvalidParms) || errors.Is(err, proto.ResNoSupport) {
		return unsupported{what: what}
	}
	return err
}

// state fetches the cluster's metadata from the sheep dog talks to.
func (a *app) state(ctx context.Context) (*api.ClusterState, error) {
	c, err := a.conn(ctx)
	if err != nil {
		return nil, err
	}
	var st api.ClusterState
	if err := a.meta(ctx, c, proto.OpClusterState, "reading the cluster state", nil, &st); err != nil {
		return nil, err
	}
	if st.State == nil {
		return nil, fmt.Errorf("the sheep sent an empty cluster state: %w", client.ErrProtocol)
	}
	if st.State.VDIs == nil {
		st.State.VDIs = map[uint32]*cluster.VDI{}
	}
	return &st, nil
}

// formatted fetches the state and fails unless the cluster is formatted.
func (a *app) formatted(ctx context.Context) (*api.ClusterState, error) {
	st, err := a.state(ctx)
	if err != nil {
		return nil, err
	}
	if st.State.Format == nil {
		return nil, proto.ResWaitForFormat
	}
	return st, nil
}

// nodeInfo asks the sheep at addr about itself.
func (a *app) nodeInfo(ctx context.Context, addr string) (*api.NodeInfo, error) {
	c, err := a.connTo(ctx, addr)
	if err != nil {
		return nil, err
	}
	var ni api.NodeInfo
	if err := a.meta(ctx, c, proto.OpNodeInfo, "reading node information", nil, &ni); err != nil {
		return nil, err
	}
	return &ni, nil
}

// volume runs a VDI lifecycle operation on the sheep.
func (a *app) volume(ctx context.Context, op api.VolumeOp) (*cluster.Result, error) {
	return a.volumeT(ctx, a.timeout, op)
}

// volumeT is volume with its own timeout.
func (a *app) volumeT(ctx context.Context, d time.Duration, op api.VolumeOp) (*cluster.Result, error) {
	c, err := a.conn(ctx)
	if err != nil {
		return nil, err
	}
	var r cluster.Result
	if err := a.metaT(ctx, d, c, proto.OpMeta, "vdi "+op.Op, api.MetaRequest{Volume: &op}, &r); err != nil {
		return nil, err
	}
	if r.Code != proto.ResSuccess {
		return &r, &serverError{code: r.Code, msg: r.Message}
	}
	return &r, nil
}

// propose commits a metadata command through the sheep.
func (a *app) propose(ctx context.Context, what string, cmd cluster.Command) (*cluster.Result, error) {
	c, err := a.conn(ctx)
	if err != nil {
		return nil, err
	}
	var r cluster.Result
	if err := a.meta(ctx, c, proto.OpMeta, what, api.MetaRequest{Propose: &cmd}, &r); err != nil {
		return nil, err
	}
	if r.Code != proto.ResSuccess {
		return &r, &serverError{code: r.Code, msg: r.Message}
	}
	return &r, nil
}

// lookup finds a VDI in the state by name and snapshot (tag or id), with
// the server's rules (cluster.State.Lookup).
func lookup(st *api.ClusterState, name, tag string, snapID uint32) (*cluster.VDI, error) {
	v, err := st.State.Lookup(name, tag, snapID)
	if err != nil {
		return nil, err
	}
	return v, nil
}

// vdiDesc names a VDI or snapshot for messages, as sheepdog does.
func vdiDesc(name, tag string, snapID uint32) string {
	switch {
	case tag != "":
		return fmt.Sprintf("%s (tag=%s)", name, tag)
	case snapID != 0:
		return fmt.Sprintf("%s (snapid=%d)", name, snapID)
	}
	return name
}
