package iscsi

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gosheep/gosheep/target/iscsi/pdu"
	"github.com/gosheep/gosheep/volume"
	"github.com/gosheep/gosheep/volume/voltest"
)

// testServer is a Server on 127.0.0.1 with MemDevice targets.
type testServer struct {
	*Server
	addr string
	devs map[string]*voltest.MemDevice
	done chan error
}

func startServer(t testing.TB, cfg Config, names ...string) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: New(cfg), addr: ln.Addr().String(), devs: map[string]*voltest.MemDevice{}, done: make(chan error, 1)}
	for i, n := range names {
		d := voltest.NewMemDevice(64<<20, 4<<20)
		ts.devs[n] = d
		if err := ts.AddTarget(TargetSpec{Name: n, VID: uint32(0x100 + i), Device: d}); err != nil {
			t.Fatal(err)
		}
	}
	go func() { ts.done <- ts.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ts.Close()
		if err := <-ts.done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if n := ts.Panics(); n != 0 {
			t.Errorf("%d panics recovered", n)
		}
	})
	return ts
}

func (ts *testServer) url(name string) string {
	return fmt.Sprintf("iscsi://%s/%s/0", ts.addr, IQN(name))
}

// tool returns the path of an external client; missing tools skip the
// test only in -short mode (CI installs them).
func tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if testing.Short() {
			t.Skipf("%s not installed (apt-get install libiscsi-bin qemu-utils qemu-block-extra tgt)", name)
		}
		t.Fatalf("%s not installed: apt-get install libiscsi-bin qemu-utils qemu-block-extra tgt", name)
	}
	return p
}

// run runs a command with a timeout and returns its combined output.
func run(t testing.TB, timeout time.Duration, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool(t, name), args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustRun(t testing.TB, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := run(t, timeout, nil, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// client is a minimal iSCSI initiator for protocol tests.
type client struct {
	t      testing.TB
	nc     net.Conn
	itt    uint32
	cmdSN  uint32
	statSN uint32
	maxCmd uint32
	tsih   uint16
	mrdsl  uint32 // target's MaxRecvDataSegmentLength
}

func dial(t testing.TB, addr string) *client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	return &client{t: t, nc: nc, itt: 1, cmdSN: 1, mrdsl: 8192}
}

func (c *client) send(h *pdu.Header, data []byte) {
	c.t.Helper()
	if err := pdu.WritePDU(c.nc, h, data, false, false); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *client) recv() *pdu.PDU {
	c.t.Helper()
	p, err := c.tryRecv()
	if err != nil {
		c.t.Fatalf("recv: %v", err)
	}
	return p
}

func (c *client) tryRecv() (*pdu.PDU, error) {
	p, err := pdu.ReadPDU(c.nc, pdu.Limits{MaxData: 1 << 24})
	if err != nil {
		return nil, err
	}
	if p.Opcode() != pdu.OpDataIn || p.Flags()&pdu.FlagStatus != 0 {
		c.statSN = p.StatSN() + 1
	}
	if p.Opcode() != pdu.OpLoginResp {
		c.maxCmd = p.MaxCmdSN()
	}
	return p, nil
}

// login performs a login with the given keys (security stage skipped
// unless keys hold AuthMethod). It returns the final login response.
func (c *client) login(keys ...string) (*pdu.PDU, error) {
	c.t.Helper()
	var h pdu.Header
	h.SetOpcode(pdu.OpLoginReq)
	h[0] |= 0x40
	h.SetFlags(0x80 | 1<<2 | 3) // T, CSG=operational, NSG=full feature
	copy(h[8:14], []byte{0x80, 0, 0, 0, 0x12, 0x34})
	h.SetITT(c.itt)
	binary.BigEndian.PutUint32(h[24:], c.cmdSN)
	kv := strings.Join(keys, "\x00") + "\x00"
	// A refused connection may be reset while the request is being
	// written: that is a failed login, not a broken test.
	if err := pdu.WritePDU(c.nc, &h, []byte(kv), false, false); err != nil {
		return nil, err
	}
	p, err := c.tryRecv()
	if err != nil {
		return nil, err
	}
	if p.Opcode() != pdu.OpLoginResp {
		return p, fmt.Errorf("opcode %#x", p.Opcode())
	}
	if p.Header[36] != 0 {
		return p, fmt.Errorf("login status %#02x%02x", p.Header[36], p.Header[37])
	}
	c.tsih = binary.BigEndian.Uint16(p.Header[14:])
	c.statSN = p.StatSN() + 1
	kvs, _ := pdu.ParseText(p.Data)
	for _, kv := range kvs {
		if kv.Key == "MaxRecvDataSegmentLength" {
			fmt.Sscan(kv.Value, &c.mrdsl)
		}
	}
	return p, nil
}

func (c *client) loginNormal(iqn string, extra ...string) {
	c.t.Helper()
	c.loginAs("iqn.2026-11.test:client", iqn, extra...)
}

func (c *client) loginAs(initiator, iqn string, extra ...string) {
	c.t.Helper()
	keys := []string{"InitiatorName=" + initiator, "TargetName=" + iqn, "SessionType=Normal",
		"MaxRecvDataSegmentLength=65536", "ImmediateData=Yes", "InitialR2T=No", "FirstBurstLength=65536",
		"MaxBurstLength=262144", "HeaderDigest=None", "DataDigest=None"}
	for _, e := range extra { // extra keys override the defaults
		k, _, _ := strings.Cut(e, "=")
		replaced := false
		for i, d := range keys {
			if strings.HasPrefix(d, k+"=") {
				keys[i], replaced = e, true
			}
		}
		if !replaced {
			keys = append(keys, e)
		}
	}
	if _, err := c.login(keys...); err != nil {
		c.t.Fatal(err)
	}
}

// cmd sends a SCSI command and returns status, sense and Data-In.
type cmdResult struct {
	status   byte
	flags    byte
	residual uint32
	sense    []byte
	data     []byte
}

func (c *client) scsi(cdb []byte, read bool, edtl uint32, out []byte) cmdResult {
	c.t.Helper()
	itt := c.itt
	c.itt++
	var h pdu.Header
	h.SetOpcode(pdu.OpSCSICmd)
	f := byte(pdu.FlagFinal | 1) // simple task attribute
	if read {
		f |= pdu.FlagRead
	}
	if out != nil {
		f |= pdu.FlagWrite
	}
	h.SetFlags(f)
	h.SetITT(itt)
	h.SetField20(edtl)
	binary.BigEndian.PutUint32(h[24:], c.cmdSN)
	binary.BigEndian.PutUint32(h[28:], c.statSN)
	c.cmdSN++
	copy(h[32:48], cdb)
	if len(out) > 65536 {
		c.t.Fatal("test client: writes above 64 KiB are not supported")
	}
	c.send(&h, out)
	var res cmdResult
	for {
		p := c.recv()
		switch p.Opcode() {
		case pdu.OpDataIn:
			res.data = append(res.data, p.Data...)
			if p.Flags()&pdu.FlagStatus != 0 {
				res.status, res.flags, res.residual = p.Header[3], p.Flags(), p.Residual()
				return res
			}
		case pdu.OpSCSIResp:
			res.status, res.flags, res.residual = p.Header[3], p.Flags(), p.Residual()
			if len(p.Data) >= 2 {
				n := int(binary.BigEndian.Uint16(p.Data))
				res.sense = p.Data[2 : 2+n]
			}
			return res
		case pdu.OpR2T:
			c.t.Fatalf("unexpected R2T")
		default:
			c.t.Fatalf("unexpected opcode %#x", p.Opcode())
		}
	}
}

func (c *client) logout() error {
	var h pdu.Header
	h.SetOpcode(pdu.OpLogoutReq)
	h[0] |= 0x40
	h.SetFlags(0x80)
	h.SetITT(c.itt)
	c.itt++
	binary.BigEndian.PutUint32(h[24:], c.cmdSN)
	binary.BigEndian.PutUint32(h[28:], c.statSN)
	c.send(&h, nil)
	p, err := c.tryRecv()
	if err != nil {
		return err
	}
	if p.Opcode() != pdu.OpLogoutResp || p.Header[2] != 0 {
		return fmt.Errorf("logout response %#x/%d", p.Opcode(), p.Header[2])
	}
	return nil
}

// senseKey returns key and ASC<<8|ASCQ of fixed-format sense.
func senseKey(s []byte) (byte, uint16) {
	if len(s) < 14 {
		return 0xff, 0xffff
	}
	return s[2] & 0x0f, uint16(s[12])<<8 | uint16(s[13])
}

// tur issues TEST UNIT READY until no unit attention is pending and
// returns the unit attentions seen.
func (c *client) drainUA() []uint16 {
	var uas []uint16
	for range 20 {
		r := c.scsi([]byte{0}, false, 0, nil)
		if r.status == 0 {
			return uas
		}
		k, asc := senseKey(r.sense)
		if k != 6 {
			c.t.Fatalf("TUR: sense key %#x asc %#04x", k, asc)
		}
		uas = append(uas, asc)
	}
	c.t.Fatal("unit attentions never cleared")
	return nil
}

// countingDevice counts FUA writes and flushes of a Device.
type countingDevice struct {
	volume.Device
	mu      sync.Mutex
	fua     int
	flushes int
}

func (d *countingDevice) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	if fua {
		d.mu.Lock()
		d.fua++
		d.mu.Unlock()
	}
	return d.Device.WriteAt(ctx, p, off, fua)
}

func (d *countingDevice) Flush(ctx context.Context) error {
	d.mu.Lock()
	d.flushes++
	d.mu.Unlock()
	return d.Device.Flush(ctx)
}

func (d *countingDevice) counts() (int, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fua, d.flushes
}
