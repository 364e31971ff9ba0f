package iscsi

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gosheep/gosheep/target/iscsi/iscsitest"
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

// client is the test initiator.
type client = iscsitest.Conn

type cmdResult = iscsitest.Result

func dial(t testing.TB, addr string) *client { return iscsitest.Dial(t, addr) }

var senseKey = iscsitest.SenseKey

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
