package iscsi

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gosheep/gosheep/target/iscsi/pdu"
	"github.com/gosheep/gosheep/target/iscsi/scsi"
)

// Login stages.
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFull        = 3
)

// Login status (class<<8 | detail), RFC 7143 §11.13.5.
const (
	loginSuccess         = 0x0000
	loginAuthFailed      = 0x0201
	loginNotFound        = 0x0203
	loginTargetRemoved   = 0x0204
	loginUnsupportedVer  = 0x0205
	loginTooManyConns    = 0x0206
	loginMissingParam    = 0x0207
	loginNoSessionType   = 0x0209
	loginSessionNotExist = 0x020a
	loginInvalidDuring   = 0x020b
	loginInitiatorError  = 0x0200
	loginTargetError     = 0x0300
	loginUnavailable     = 0x0301
	loginOutOfResources  = 0x0302
)

var errLogin = errors.New("iscsi: login failed")

// maxLoginText bounds text accumulated over continued login PDUs.
const maxLoginText = 64 << 10

// chapState is the CHAP exchange of one login.
type chapState struct {
	step      int // 0: not started, 1: AuthMethod=CHAP agreed, 2: challenge sent, 3: done
	id        byte
	challenge []byte
}

type loginState struct {
	c          *conn
	first      bool
	initiator  string
	targetName string
	discovery  bool
	tgt        *target
	chapCfg    *CHAP
	authDone   bool
	chap       chapState
	stage      int
	isid       uint64
	tsih       uint16
	cmdSN      uint32
	params     sessParams
	ourMRDSL   uint32
	textBuf    []byte
	sentTPGT   bool
	tpgt       uint16 // the portal group tag sent: the session's relative target port
}

// login runs the login phase. On success c.sess is set and the connection
// is in full feature phase.
func (c *conn) login() error {
	c.nc.SetReadDeadline(time.Now().Add(c.srv.cfg.LoginTimeout))
	cfg := &c.srv.cfg
	ls := &loginState{c: c, first: true, ourMRDSL: cfg.MaxRecvDataSegmentLength,
		params: sessParams{
			initialR2T: true, immediateData: true,
			maxBurst: 262144, firstBurst: 65536, maxOutstandingR2: 1, maxSendData: 8192,
		}}
	for {
		p, err := pdu.ReadPDU(c.br, pdu.Limits{MaxData: 8192})
		if err != nil {
			return err
		}
		if p.Opcode() != pdu.OpLoginReq {
			c.loginReject(p, loginInvalidDuring)
			return fmt.Errorf("%w: opcode %#x during login", errLogin, p.Opcode())
		}
		done, err := ls.step(p)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

func (c *conn) loginReject(p *pdu.PDU, status uint16) {
	var h pdu.Header
	h.SetOpcode(pdu.OpLoginResp)
	copy(h[8:16], p.Header[8:16])
	h.SetITT(p.ITT())
	h[36], h[37] = byte(status>>8), byte(status)
	h.SetStatSN(c.statSN)
	h.SetExpCmdSN(p.CmdSN())
	h.SetMaxCmdSN(p.CmdSN())
	c.write(func() error { return c.bw.WritePDU(&h, nil, false, false) })
}

func (ls *loginState) fail(p *pdu.PDU, status uint16, why string) (bool, error) {
	ls.c.loginReject(p, status)
	return false, fmt.Errorf("%w: %s (status %#04x)", errLogin, why, status)
}

// step handles one login request PDU.
func (ls *loginState) step(p *pdu.PDU) (bool, error) {
	c := ls.c
	flags := p.Flags()
	transit, cont := flags&0x80 != 0, flags&0x40 != 0
	csg, nsg := int(flags>>2)&3, int(flags)&3
	if p.Header[3] > 0 { // version-min above 0
		return ls.fail(p, loginUnsupportedVer, "version")
	}
	if transit && cont {
		return ls.fail(p, loginInitiatorError, "T and C both set")
	}
	if ls.first {
		ls.first = false
		ls.isid, ls.tsih, ls.cmdSN = p.ISID(), p.TSIH(), p.CmdSN()
		c.cid = p.CID()
		c.statSN = p.ExpStatSN()
		ls.stage = csg
		if csg != stageSecurity && csg != stageOperational {
			return ls.fail(p, loginInitiatorError, "bad CSG")
		}
	} else if csg != ls.stage {
		return ls.fail(p, loginInitiatorError, "CSG changed")
	}
	if len(ls.textBuf)+len(p.Data) > maxLoginText {
		return ls.fail(p, loginOutOfResources, "login text too long")
	}
	ls.textBuf = append(ls.textBuf, p.Data...)
	if cont {
		// More text follows: acknowledge with an empty response.
		return false, ls.respond(p, false, nil, 0)
	}
	kvs, err := pdu.ParseText(ls.textBuf)
	ls.textBuf = ls.textBuf[:0]
	if err != nil {
		return ls.fail(p, loginInitiatorError, err.Error())
	}
	var resp []pdu.KV
	for _, kv := range kvs {
		r, status, why := ls.key(kv)
		if status != 0 {
			return ls.fail(p, status, why)
		}
		resp = append(resp, r...)
	}
	if ls.initiator == "" {
		return ls.fail(p, loginMissingParam, "no InitiatorName")
	}
	if ls.tgt == nil && !ls.discovery {
		if ls.targetName == "" {
			return ls.fail(p, loginMissingParam, "no TargetName")
		}
		ls.tgt = c.srv.findTarget(c.ctx, ls.targetName)
		if ls.tgt == nil {
			return ls.fail(p, loginNotFound, "no target "+ls.targetName)
		}
		ls.tgt.mu.Lock()
		removed := ls.tgt.removed
		if ls.tgt.chap != nil {
			cp := *ls.tgt.chap
			ls.chapCfg = &cp
		}
		ls.tgt.mu.Unlock()
		if removed {
			return ls.fail(p, loginTargetRemoved, "target removed")
		}
	}
	if !ls.sentTPGT && !ls.discovery {
		tag, ok := c.srv.portTag()
		if !ok {
			return ls.fail(p, loginUnavailable, "this node has no port number yet")
		}
		resp = append(resp, pdu.KV{Key: "TargetPortalGroupTag", Value: strconv.Itoa(int(tag))})
		ls.sentTPGT, ls.tpgt = true, tag
	}
	if ls.stage == stageSecurity {
		r, status, why := ls.chapStep(kvs)
		if status != 0 {
			return ls.fail(p, status, why)
		}
		resp = append(resp, r...)
	}
	if ls.stage == stageOperational && ls.chapCfg != nil && !ls.authDone {
		return ls.fail(p, loginAuthFailed, "CHAP required")
	}
	next := ls.stage
	if transit {
		if nsg <= ls.stage || nsg == 2 {
			return ls.fail(p, loginInitiatorError, "bad NSG")
		}
		if ls.stage == stageSecurity && ls.chapCfg != nil && !ls.authDone {
			if ls.chap.step == 0 {
				return ls.fail(p, loginAuthFailed, "CHAP required")
			}
			// Still exchanging CHAP: do not transit yet.
			transit = false
		} else {
			next = nsg
		}
	}
	if ls.stage == stageOperational {
		// Operational keys only in operational-stage responses; if the
		// initiator skips that stage it assumes our default of 8192.
		resp = append(resp, ls.declarations()...)
	}
	if transit && next == stageFull {
		if err := ls.enterFullFeature(p); err != nil {
			return false, err
		}
		if err := ls.respond(p, true, pdu.MarshalText(dedup(resp)), stageFull); err != nil {
			return false, err
		}
		ls.c.lim = pdu.Limits{MaxData: ls.ourMRDSL, HeaderDigest: ls.params.headerDigest, DataDigest: ls.params.dataDigest}
		return true, nil
	}
	err = ls.respond(p, transit, pdu.MarshalText(dedup(resp)), next)
	if transit {
		ls.stage = next
	}
	return false, err
}

// dedup keeps the last answer for each key (declarations may repeat).
func dedup(kvs []pdu.KV) []pdu.KV {
	idx := map[string]int{}
	var out []pdu.KV
	for _, kv := range kvs {
		if i, ok := idx[kv.Key]; ok {
			out[i] = kv
			continue
		}
		idx[kv.Key] = len(out)
		out = append(out, kv)
	}
	return out
}

func (ls *loginState) declarations() []pdu.KV {
	return []pdu.KV{{Key: "MaxRecvDataSegmentLength", Value: strconv.Itoa(int(ls.ourMRDSL))}}
}

func (ls *loginState) respond(p *pdu.PDU, transit bool, data []byte, nsg int) error {
	c := ls.c
	var h pdu.Header
	h.SetOpcode(pdu.OpLoginResp)
	f := byte(ls.stage) << 2
	if transit {
		f |= 0x80 | byte(nsg)
	}
	h.SetFlags(f)
	copy(h[8:14], p.Header[8:14])
	h[14], h[15] = byte(ls.tsih>>8), byte(ls.tsih)
	h.SetITT(p.ITT())
	h.SetStatSN(c.statSN)
	h.SetExpCmdSN(ls.cmdSN)
	h.SetMaxCmdSN(ls.cmdSN + uint32(c.srv.cfg.QueueDepth) - 1)
	if transit && nsg == stageFull {
		c.statSN++
	}
	return c.write(func() error { return c.bw.WritePDU(&h, data, false, false) })
}

// key negotiates one key; it returns the answer pairs or a login status.
func (ls *loginState) key(kv pdu.KV) ([]pdu.KV, uint16, string) {
	k, v := kv.Key, kv.Value
	ans := func(val string) []pdu.KV { return []pdu.KV{{Key: k, Value: val}} }
	num := func(lo, hi uint64) (uint64, bool) {
		n, err := strconv.ParseUint(v, 0, 64)
		if err != nil || n < lo || n > hi {
			return 0, false
		}
		return n, true
	}
	yes := func() (bool, bool) {
		switch v {
		case "Yes":
			return true, true
		case "No":
			return false, true
		}
		return false, false
	}
	p := &ls.params
	switch k {
	case "InitiatorName":
		if v == "" || len(v) > 223 {
			return nil, loginInitiatorError, "bad InitiatorName"
		}
		ls.initiator = v
		return nil, 0, ""
	case "TargetName":
		ls.targetName = v
		return nil, 0, ""
	case "SessionType":
		switch v {
		case "Discovery":
			ls.discovery = true
		case "Normal":
		default:
			return nil, loginNoSessionType, "session type " + v
		}
		return nil, 0, ""
	case "InitiatorAlias", "TargetAlias", "TargetAddress", "TargetPortalGroupTag":
		return nil, 0, ""
	case "AuthMethod", "CHAP_A", "CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C":
		if ls.stage != stageSecurity {
			return nil, loginInitiatorError, k + " outside security negotiation"
		}
		return nil, 0, "" // handled by chapStep
	}
	switch k {
	case "HeaderDigest", "DataDigest":
		choice := ""
		for _, o := range strings.Split(v, ",") {
			if o == "None" || o == "CRC32C" {
				choice = o
				break
			}
		}
		if choice == "" {
			return ans("Reject"), 0, ""
		}
		if k == "HeaderDigest" {
			p.headerDigest = choice == "CRC32C"
		} else {
			p.dataDigest = choice == "CRC32C"
		}
		return ans(choice), 0, ""
	case "MaxConnections":
		if _, ok := num(1, 65535); !ok {
			return ans("Reject"), 0, ""
		}
		return ans("1"), 0, ""
	case "InitialR2T":
		b, ok := yes()
		if !ok {
			return ans("Reject"), 0, ""
		}
		p.initialR2T = b // OR with our No
		return ans(yesNo(b)), 0, ""
	case "ImmediateData":
		b, ok := yes()
		if !ok {
			return ans("Reject"), 0, ""
		}
		p.immediateData = b // AND with our Yes
		return ans(yesNo(b)), 0, ""
	case "MaxRecvDataSegmentLength":
		n, ok := num(512, 1<<24-1)
		if !ok {
			return ans("Reject"), 0, ""
		}
		p.maxSendData = uint32(n)
		return nil, 0, "" // declarative
	case "MaxBurstLength":
		n, ok := num(512, 1<<24-1)
		if !ok {
			return ans("Reject"), 0, ""
		}
		p.maxBurst = min(uint32(n), ls.c.srv.cfg.MaxBurstLength)
		p.firstBurst = min(p.firstBurst, p.maxBurst)
		return ans(strconv.Itoa(int(p.maxBurst))), 0, ""
	case "FirstBurstLength":
		n, ok := num(512, 1<<24-1)
		if !ok {
			return ans("Reject"), 0, ""
		}
		p.firstBurst = min(uint32(n), ls.c.srv.cfg.FirstBurstLength, p.maxBurst)
		return ans(strconv.Itoa(int(p.firstBurst))), 0, ""
	case "DefaultTime2Wait":
		if _, ok := num(0, 3600); !ok {
			return ans("Reject"), 0, ""
		}
		return ans("2"), 0, ""
	case "DefaultTime2Retain":
		if _, ok := num(0, 3600); !ok {
			return ans("Reject"), 0, ""
		}
		return ans("0"), 0, "" // ERL 0: nothing to retain
	case "MaxOutstandingR2T":
		n, ok := num(1, 65535)
		if !ok {
			return ans("Reject"), 0, ""
		}
		p.maxOutstandingR2 = min(uint32(n), ls.c.srv.cfg.MaxOutstandingR2T)
		return ans(strconv.Itoa(int(p.maxOutstandingR2))), 0, ""
	case "DataPDUInOrder", "DataSequenceInOrder":
		if _, ok := yes(); !ok {
			return ans("Reject"), 0, ""
		}
		return ans("Yes"), 0, "" // OR with our Yes
	case "ErrorRecoveryLevel":
		if _, ok := num(0, 2); !ok {
			return ans("Reject"), 0, ""
		}
		return ans("0"), 0, ""
	case "IFMarker", "OFMarker":
		return ans("No"), 0, ""
	case "IFMarkInt", "OFMarkInt":
		return ans("Irrelevant"), 0, ""
	case "TaskReporting":
		return ans("RFC3720"), 0, ""
	}
	return ans("NotUnderstood"), 0, ""
}

func yesNo(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}

// chapStep advances CHAP (RFC 7143 §12.1.3) with the keys of one request.
func (ls *loginState) chapStep(kvs []pdu.KV) ([]pdu.KV, uint16, string) {
	get := func(k string) (string, bool) {
		for _, kv := range kvs {
			if kv.Key == k {
				return kv.Value, true
			}
		}
		return "", false
	}
	if am, ok := get("AuthMethod"); ok {
		methods := strings.Split(am, ",")
		has := func(m string) bool {
			for _, x := range methods {
				if x == m {
					return true
				}
			}
			return false
		}
		switch {
		case ls.chapCfg != nil && has("CHAP"):
			ls.chap.step = 1
			return []pdu.KV{{Key: "AuthMethod", Value: "CHAP"}}, 0, ""
		case ls.chapCfg == nil && has("None"):
			ls.authDone = true
			return []pdu.KV{{Key: "AuthMethod", Value: "None"}}, 0, ""
		case ls.chapCfg == nil && ls.discovery:
			ls.authDone = true
			return []pdu.KV{{Key: "AuthMethod", Value: "None"}}, 0, ""
		default:
			return nil, loginAuthFailed, "no acceptable AuthMethod"
		}
	}
	switch ls.chap.step {
	case 0:
		if ls.chapCfg == nil {
			ls.authDone = true
		}
		return nil, 0, ""
	case 1:
		a, ok := get("CHAP_A")
		if !ok {
			return nil, 0, ""
		}
		md5ok := false
		for _, x := range strings.Split(a, ",") {
			if x == "5" {
				md5ok = true
			}
		}
		if !md5ok {
			return nil, loginAuthFailed, "CHAP_A without MD5"
		}
		var rnd [17]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, loginTargetError, "random: " + err.Error()
		}
		ls.chap.id = rnd[0]
		ls.chap.challenge = append([]byte(nil), rnd[1:]...)
		ls.chap.step = 2
		return []pdu.KV{
			{Key: "CHAP_A", Value: "5"},
			{Key: "CHAP_I", Value: strconv.Itoa(int(ls.chap.id))},
			{Key: "CHAP_C", Value: "0x" + hex.EncodeToString(ls.chap.challenge)},
		}, 0, ""
	case 2:
		n, okN := get("CHAP_N")
		r, okR := get("CHAP_R")
		if !okN || !okR {
			return nil, loginAuthFailed, "CHAP_N/CHAP_R missing"
		}
		resp, err := decodeCHAPBinary(r)
		if err != nil || len(resp) != md5.Size {
			return nil, loginAuthFailed, "bad CHAP_R"
		}
		want := chapMD5(ls.chap.id, ls.chapCfg.Secret, ls.chap.challenge)
		if subtle.ConstantTimeCompare([]byte(n), []byte(ls.chapCfg.User)) != 1 ||
			subtle.ConstantTimeCompare(resp, want) != 1 {
			return nil, loginAuthFailed, "CHAP response mismatch"
		}
		ls.chap.step = 3
		ls.authDone = true
		iStr, okI := get("CHAP_I")
		cStr, okC := get("CHAP_C")
		if !okI && !okC {
			return nil, 0, ""
		}
		// Mutual CHAP: the initiator authenticates us.
		if !okI || !okC || ls.chapCfg.MutualSecret == "" {
			return nil, loginAuthFailed, "mutual CHAP not configured"
		}
		id, err := strconv.ParseUint(iStr, 0, 8)
		if err != nil {
			return nil, loginAuthFailed, "bad CHAP_I"
		}
		ch, err := decodeCHAPBinary(cStr)
		if err != nil || len(ch) == 0 || len(ch) > 1024 {
			return nil, loginAuthFailed, "bad CHAP_C"
		}
		if subtle.ConstantTimeCompare(ch, ls.chap.challenge) == 1 {
			return nil, loginAuthFailed, "reflected CHAP challenge"
		}
		mr := chapMD5(byte(id), ls.chapCfg.MutualSecret, ch)
		return []pdu.KV{
			{Key: "CHAP_N", Value: ls.chapCfg.MutualUser},
			{Key: "CHAP_R", Value: "0x" + hex.EncodeToString(mr)},
		}, 0, ""
	}
	return nil, 0, ""
}

func chapMD5(id byte, secret string, challenge []byte) []byte {
	h := md5.New()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return h.Sum(nil)
}

// decodeCHAPBinary decodes 0x-hex or 0b-base64 values (RFC 7143 §6.1).
func decodeCHAPBinary(v string) ([]byte, error) {
	if len(v) > 4096 {
		return nil, errors.New("too long")
	}
	switch {
	case strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X"):
		s := v[2:]
		if len(s)%2 == 1 {
			s = "0" + s
		}
		return hex.DecodeString(s)
	case strings.HasPrefix(v, "0b") || strings.HasPrefix(v, "0B"):
		return base64.StdEncoding.DecodeString(v[2:])
	}
	return nil, errors.New("not a binary value")
}

// enterFullFeature creates (or reinstates) the session.
func (ls *loginState) enterFullFeature(p *pdu.PDU) error {
	c := ls.c
	s := c.srv
	if ls.chapCfg != nil && !ls.authDone {
		_, err := ls.fail(p, loginAuthFailed, "not authenticated")
		return err
	}
	if ls.tsih != 0 {
		// Adding a connection or reinstating one: we keep one connection
		// per session and end sessions with their connection.
		_, err := ls.fail(p, loginSessionNotExist, "TSIH given")
		return err
	}
	se := &session{
		srv: s, tgt: ls.tgt, isid: ls.isid, initiator: ls.initiator,
		params: ls.params, expCmdSN: ls.cmdSN, window: s.cfg.QueueDepth,
		conn: c, done: make(chan struct{}),
	}
	if se.params.firstBurst > se.params.maxBurst {
		se.params.firstBurst = se.params.maxBurst
	}
	if ls.tgt != nil {
		se.nexus = &scsi.Nexus{InitiatorName: ls.initiator, ISID: ls.isid, RelPort: ls.tpgt}
		se.nexus.ID = se.nexus.InitiatorPort()
		if s.cfg.PortID != "" {
			// The same initiator port reaching another node is another
			// I_T nexus.
			se.nexus.ID += "@" + s.cfg.PortID
		}
		// Session reinstatement: an old session of the same initiator
		// port on this target is closed first.
		ls.tgt.mu.Lock()
		var old []*session
		for o := range ls.tgt.sessions {
			if o.isid == ls.isid && o.initiator == ls.initiator {
				old = append(old, o)
			}
		}
		ls.tgt.mu.Unlock()
		for _, o := range old {
			o.close()
			select {
			case <-o.done:
			case <-time.After(10 * time.Second):
				_, err := ls.fail(p, loginTargetError, "old session did not end")
				return err
			}
		}
	}
	tsih, ok := s.allocTSIH(se)
	if !ok {
		_, err := ls.fail(p, loginOutOfResources, "no free TSIH")
		return err
	}
	se.tsih = tsih
	ls.tsih = tsih
	if ls.tgt != nil {
		ls.tgt.mu.Lock()
		if ls.tgt.removed {
			ls.tgt.mu.Unlock()
			s.freeTSIH(tsih, se)
			_, err := ls.fail(p, loginTargetRemoved, "target removed")
			return err
		}
		ls.tgt.sessions[se] = struct{}{}
		ls.tgt.mu.Unlock()
		ls.tgt.lu.Attach(se.nexus)
	}
	c.sess = se
	s.rec.Sessions("iscsi", 1)
	return nil
}
