package iscsi

import (
	"sort"

	"github.com/gosheep/gosheep/target/iscsi/pdu"
)

// textContinuation holds the rest of a Text response larger than the
// initiator's MaxRecvDataSegmentLength (RFC 7143 §11.11).
type textContinuation struct {
	itt  uint32
	ttt  uint32
	rest []byte
}

// maxTextRequest bounds a (continued) Text request.
const maxTextRequest = 64 << 10

func (c *conn) text(p *pdu.PDU) error {
	se := c.sess
	defer se.done1(&p.Header)
	c.tmu.Lock()
	cont := c.textResp
	c.tmu.Unlock()
	var body []byte
	if p.TTT() != pdu.ReservedTag {
		// The initiator asks for the next part of our response.
		if cont == nil || cont.ttt != p.TTT() || cont.itt != p.ITT() {
			return c.sendReject(rejectInvalidField, &p.Header)
		}
		body = cont.rest
	} else {
		if p.Flags()&0x40 != 0 {
			// Continued requests are not needed by any key we support.
			return c.sendReject(rejectNotSupported, &p.Header)
		}
		kvs, err := pdu.ParseText(p.Data)
		if err != nil {
			return c.sendReject(rejectInvalidData, &p.Header)
		}
		var resp []pdu.KV
		for _, kv := range kvs {
			if kv.Key == "SendTargets" {
				resp = append(resp, c.sendTargets(kv.Value)...)
				continue
			}
			resp = append(resp, pdu.KV{Key: kv.Key, Value: "NotUnderstood"})
		}
		body = pdu.MarshalText(resp)
	}
	max := int(se.params.maxSendData)
	var h pdu.Header
	h.SetOpcode(pdu.OpTextResp)
	h.SetITT(p.ITT())
	c.tmu.Lock()
	if len(body) > max {
		c.nextTTT++
		if c.nextTTT == pdu.ReservedTag {
			c.nextTTT = 1
		}
		c.textResp = &textContinuation{itt: p.ITT(), ttt: c.nextTTT, rest: body[max:]}
		h.SetFlags(0x40) // C
		h.SetField20(c.nextTTT)
		body = body[:max]
	} else {
		c.textResp = nil
		h.SetFlags(0x80)
		h.SetField20(pdu.ReservedTag)
	}
	c.tmu.Unlock()
	return c.write(func() error { return c.writePDU(&h, body, true) })
}

// sendTargets answers SendTargets=All, =<iqn> or = (this session's target).
func (c *conn) sendTargets(v string) []pdu.KV {
	s := c.srv
	var ts []*target
	switch {
	case v == "All":
		if c.sess.tgt != nil {
			ts = []*target{c.sess.tgt} // only discovery sessions list all
		} else {
			s.resolve(c.ctx, "")
			s.mu.Lock()
			for _, t := range s.targets {
				ts = append(ts, t)
			}
			s.mu.Unlock()
		}
	case v == "":
		if c.sess.tgt != nil {
			ts = []*target{c.sess.tgt}
		}
	default:
		if t := s.findTarget(c.ctx, v); t != nil {
			ts = []*target{t}
		}
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].iqn < ts[j].iqn })
	portals := s.portals(c)
	var out []pdu.KV
	for _, t := range ts {
		out = append(out, pdu.KV{Key: "TargetName", Value: t.iqn})
		for _, a := range portals {
			out = append(out, pdu.KV{Key: "TargetAddress", Value: a})
		}
	}
	return out
}
