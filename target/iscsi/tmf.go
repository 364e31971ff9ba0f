package iscsi

import (
	"context"
	"time"

	"github.com/gosheep/gosheep/target/iscsi/pdu"
)

// TMF functions and responses (RFC 7143 §11.5, §11.6).
const (
	tmfAbortTask    = 1
	tmfAbortTaskSet = 2
	tmfClearACA     = 3
	tmfClearTaskSet = 4
	tmfLUNReset     = 5
	tmfWarmReset    = 6
	tmfColdReset    = 7
	tmfReassign     = 8

	tmfComplete     = 0
	tmfNoTask       = 1
	tmfNoLUN        = 2
	tmfNotSupported = 5
	tmfRejected     = 255
)

// abortTask cancels a task without a status and waits for it.
func (t *task) abortAndWait() {
	t.mu.Lock()
	t.aborted = true
	t.mu.Unlock()
	t.abort()
	<-t.done
}

// abortAll aborts every task of the connection but skip.
func (c *conn) abortAll() {
	c.tmu.Lock()
	ts := make([]*task, 0, len(c.tasks))
	for _, t := range c.tasks {
		ts = append(ts, t)
	}
	c.tmu.Unlock()
	for _, t := range ts {
		t.abortAndWait()
	}
}

// resvTimeout bounds a reservation change made outside a command (session
// end, reset), which goes through the cluster.
const resvTimeout = 10 * time.Second

// resetLU resets the session's LU on every target port; false when the
// cluster could not be reached.
func (c *conn) resetLU(se *session) bool {
	ctx, cancel := context.WithTimeout(context.Background(), resvTimeout)
	defer cancel()
	if err := se.tgt.lu.Reset(ctx); err != nil {
		c.srv.log.Warn("iscsi: LU reset failed", "target", se.tgt.name, "err", err)
		return false
	}
	return true
}

func (c *conn) taskMgmt(p *pdu.PDU) error {
	se := c.sess
	fn := p.Flags() & 0x7f
	resp := byte(tmfComplete)
	cold := false
	lunOK := p.LUN() == 0
	switch fn {
	case tmfAbortTask:
		c.tmu.Lock()
		t := c.tasks[p.RefTaskTag()]
		c.tmu.Unlock()
		if t == nil {
			resp = tmfNoTask
		} else {
			t.abortAndWait()
		}
	case tmfAbortTaskSet, tmfClearTaskSet:
		if !lunOK {
			resp = tmfNoLUN
			break
		}
		c.abortAll()
	case tmfLUNReset:
		if !lunOK {
			resp = tmfNoLUN
			break
		}
		c.abortAll()
		if !c.resetLU(se) {
			resp = tmfRejected
		}
	case tmfWarmReset, tmfColdReset:
		c.abortAll()
		if !c.resetLU(se) {
			resp = tmfRejected
		}
		cold = fn == tmfColdReset
	case tmfClearACA, tmfReassign:
		resp = tmfNotSupported
	default:
		resp = tmfRejected
	}
	se.done1(&p.Header)
	var h pdu.Header
	h.SetOpcode(pdu.OpTaskResp)
	h.SetFlags(0x80)
	h[2] = resp
	h.SetITT(p.ITT())
	err := c.write(func() error { return c.writePDU(&h, nil, true) })
	if cold {
		// A cold reset ends every session of the target, this one too.
		se.tgt.mu.Lock()
		var all []*session
		for o := range se.tgt.sessions {
			all = append(all, o)
		}
		se.tgt.mu.Unlock()
		for _, o := range all {
			if o != se {
				o.close()
			}
		}
		c.tmu.Lock()
		c.logout = true
		c.tmu.Unlock()
	}
	return err
}
