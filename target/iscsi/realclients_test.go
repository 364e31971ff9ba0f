package iscsi

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gosheep/gosheep/volume/voltest"
)

// TestDiscoveryInquiryCapacity: iscsi-ls finds every target with our
// portal; iscsi-inq and iscsi-readcapacity16 see the LUN.
func TestDiscoveryInquiryCapacity(t *testing.T) {
	ts := startServer(t, Config{}, "alpha", "beta", "gamma.disk_1")
	out := mustRun(t, 30*time.Second, "iscsi-ls", "-s", "iscsi://"+ts.addr+"/")
	for _, n := range []string{"alpha", "beta", "gamma.disk_1"} {
		want := fmt.Sprintf("Target:%s Portal:%s,1", IQN(n), ts.addr)
		if !strings.Contains(out, want) {
			t.Errorf("iscsi-ls output lacks %q:\n%s", want, out)
		}
	}
	if got := strings.Count(out, "Lun:0    Type:DIRECT_ACCESS"); got != 3 {
		t.Errorf("want 3 disk LUNs, got %d:\n%s", got, out)
	}

	out = mustRun(t, 30*time.Second, "iscsi-inq", ts.url("alpha"))
	for _, want := range []string{"Peripheral Device Type:DIRECT_ACCESS", "Vendor:GOSHEEP", "CmdQue:1", "SBC-3"} {
		if !strings.Contains(out, want) {
			t.Errorf("iscsi-inq lacks %q:\n%s", want, out)
		}
	}
	// VPD 0x83: the NAA designator comes from the VID only.
	out = mustRun(t, 30*time.Second, "iscsi-inq", "-e", "1", "-c", "131", ts.url("alpha"))
	if !strings.Contains(out, "Designator Type:(3) NAA") || !strings.Contains(out, "Designator:["+IQN("alpha")+"]") {
		t.Errorf("VPD 0x83 without NAA designator:\n%s", out)
	}
	out = mustRun(t, 30*time.Second, "iscsi-inq", "-e", "1", "-c", "128", ts.url("beta"))
	if !strings.Contains(out, "GSHP00000101") {
		t.Errorf("VPD 0x80 serial of VID 0x101 missing:\n%s", out)
	}
	out = mustRun(t, 30*time.Second, "iscsi-readcapacity16", ts.url("beta"))
	for _, want := range []string{"RETURNED LOGICAL BLOCK ADDRESS:131071", "LOGICAL BLOCK LENGTH IN BYTES:512", "LBPME:1 LBPRZ:1", "Total size:67108864"} {
		if !strings.Contains(out, want) {
			t.Errorf("iscsi-readcapacity16 lacks %q:\n%s", want, out)
		}
	}
}

// TestQemuImgRoundTrip copies a random image into a target and back with
// qemu-img (16 coroutines, out-of-order writes, no cache) and compares.
func TestQemuImgRoundTrip(t *testing.T) {
	ts := startServer(t, Config{}, "img")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	data := make([]byte, 64<<20)
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	url := ts.url("img")
	mustRun(t, 2*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "-t", "none", "-m", "16", "-W", src, url)
	dst := filepath.Join(dir, "dst.img")
	mustRun(t, 2*time.Minute, "qemu-img", "convert", "-f", "raw", "-O", "raw", "-T", "none", "-m", "16", url, dst)
	back, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data) {
		t.Fatal("image read back differs from the one written")
	}
	// And the device itself holds the bytes.
	got := make([]byte, len(data))
	if err := ts.devs["img"].ReadAt(t.Context(), got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("device content differs (err %v)", err)
	}
}

// mustQemuIO runs qemu-io commands (cache=none) against url and fails the
// test if any of them reports a failure.
func mustQemuIO(t *testing.T, url string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "raw", "-t", "none"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := mustRun(t, time.Minute, "qemu-io", append(args, url)...)
	if strings.Contains(out, "failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io reported a failure:\n%s", out)
	}
}

// TestQemuIOPatterns writes and reads patterns with qemu-io, with FUA,
// write-zeroes and discard, and checks FUA and flush reach the device.
func TestQemuIOPatterns(t *testing.T) {
	ts := startServer(t, Config{})
	dev := &countingDevice{Device: voltest.NewMemDevice(64<<20, 4<<20)}
	if err := ts.AddTarget(TargetSpec{Name: "io", VID: 7, Device: dev}); err != nil {
		t.Fatal(err)
	}
	mustQemuIO(t, ts.url("io"),
		"write -P 0xab 0 1M",
		"write -f -P 0xcd 1M 256k",
		"read -P 0xab 0 1M",
		"read -P 0xcd 1M 256k",
		"write -z 2M 64k",
		"read -P 0 2M 64k",
		"discard 4M 4M",
		"read -P 0 4M 4M",
		"flush")
	fua, flushes := dev.counts()
	if fua == 0 {
		t.Error("write -f did not reach the device as a FUA write")
	}
	if flushes == 0 {
		t.Error("flush did not reach the device")
	}
	// A pattern check that must fail proves qemu-io verifies.
	out, _ := run(t, time.Minute, nil, "qemu-io", "-f", "raw", "-c", "read -P 0x11 0 4k", ts.url("io"))
	if !strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("wrong pattern not detected:\n%s", out)
	}
}

// TestCHAP checks one-way and mutual CHAP with iscsi-inq and qemu-img.
func TestCHAP(t *testing.T) {
	ts := startServer(t, Config{}, "sec", "open")
	if err := ts.SetCHAP("sec", &CHAP{User: "alice", Secret: "alicesecret1", MutualUser: "tgt", MutualSecret: "targetsecret2"}); err != nil {
		t.Fatal(err)
	}
	u := func(cred string) string { return fmt.Sprintf("iscsi://%s@%s/%s/0", cred, ts.addr, IQN("sec")) }
	// Without credentials: refused.
	if out, err := run(t, 30*time.Second, nil, "iscsi-inq", ts.url("sec")); err == nil {
		t.Fatalf("login without CHAP succeeded:\n%s", out)
	}
	// Wrong secret: refused.
	if out, err := run(t, 30*time.Second, nil, "iscsi-inq", u("alice%wrongsecret1")); err == nil {
		t.Fatalf("login with a wrong secret succeeded:\n%s", out)
	}
	// One-way CHAP.
	if out, err := run(t, 30*time.Second, nil, "iscsi-inq", u("alice%alicesecret1")); err != nil {
		t.Fatalf("one-way CHAP: %v\n%s", err, out)
	}
	// Mutual CHAP: the initiator checks the target's answer.
	good := []string{"LIBISCSI_CHAP_TARGET_USERNAME=tgt", "LIBISCSI_CHAP_TARGET_PASSWORD=targetsecret2"}
	if out, err := run(t, 30*time.Second, good, "iscsi-inq", u("alice%alicesecret1")); err != nil {
		t.Fatalf("mutual CHAP: %v\n%s", err, out)
	}
	bad := []string{"LIBISCSI_CHAP_TARGET_USERNAME=tgt", "LIBISCSI_CHAP_TARGET_PASSWORD=notthesecret"}
	if out, err := run(t, 30*time.Second, bad, "iscsi-inq", u("alice%alicesecret1")); err == nil {
		t.Fatalf("initiator accepted a target with the wrong mutual secret:\n%s", out)
	}
	// qemu-img with one-way and mutual CHAP.
	out, err := run(t, 30*time.Second, nil, "qemu-img", "info", u("alice%alicesecret1"))
	if err != nil || !strings.Contains(out, "virtual size: 64 MiB") {
		t.Fatalf("qemu-img info with CHAP: %v\n%s", err, out)
	}
	if out, err := run(t, 30*time.Second, good, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k", "-c", "read -P 0x5a 0 64k", u("alice%alicesecret1")); err != nil || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io with mutual CHAP: %v\n%s", err, out)
	}
	// Discovery and targets without CHAP are unaffected.
	out = mustRun(t, 30*time.Second, "iscsi-ls", "iscsi://"+ts.addr+"/")
	if !strings.Contains(out, IQN("sec")) || !strings.Contains(out, IQN("open")) {
		t.Fatalf("discovery output:\n%s", out)
	}
	mustRun(t, 30*time.Second, "iscsi-inq", ts.url("open"))
	// Clearing CHAP opens the target again.
	if err := ts.SetCHAP("sec", nil); err != nil {
		t.Fatal(err)
	}
	mustRun(t, 30*time.Second, "iscsi-inq", ts.url("sec"))
	// A target added with its secrets requires them from the first login;
	// bad secrets keep it from being added at all, rather than open.
	if err := ts.AddTarget(TargetSpec{Name: "born", VID: 7, Device: voltest.NewMemDevice(64<<20, 4<<20), CHAP: &CHAP{User: "bob", Secret: "bobsecret123"}}); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, 30*time.Second, nil, "iscsi-inq", ts.url("born")); err == nil {
		t.Fatalf("login without CHAP to a target added with CHAP succeeded:\n%s", out)
	}
	mustRun(t, 30*time.Second, "iscsi-inq", fmt.Sprintf("iscsi://bob%%bobsecret123@%s/%s/0", ts.addr, IQN("born")))
	if err := ts.AddTarget(TargetSpec{Name: "badchap", VID: 8, Device: voltest.NewMemDevice(64<<20, 4<<20), CHAP: &CHAP{User: "bob"}}); !errors.Is(err, ErrBadCHAP) {
		t.Fatalf("AddTarget with a CHAP user and no secret: %v, want ErrBadCHAP", err)
	}
	if slices.Contains(ts.Targets(), "badchap") {
		t.Fatal("a target with bad CHAP secrets was added")
	}
}

// TestBench runs qemu-img bench at queue depth 32 (reads and writes) to
// exercise concurrent commands with a real initiator.
func TestQemuImgBenchConcurrent(t *testing.T) {
	ts := startServer(t, Config{}, "qd")
	for _, args := range [][]string{
		{"bench", "-f", "raw", "-t", "none", "-c", "4000", "-s", "4k", "-d", "32"},
		{"bench", "-w", "-f", "raw", "-t", "none", "-c", "4000", "-s", "4k", "-d", "32"},
		{"bench", "-w", "-f", "raw", "-t", "none", "-c", "64", "-s", "1M", "-d", "16"},
	} {
		out := mustRun(t, 2*time.Minute, "qemu-img", append(args, ts.url("qd"))...)
		if !regexp.MustCompile(`Run completed in [0-9.]+ seconds`).MatchString(out) {
			t.Fatalf("qemu-img %v:\n%s", args, out)
		}
	}
}

// TestQemuIOWriteInParts: 1 MiB writes from a real initiator, one at a
// time, to a device that takes parts are written in parts while their
// bursts arrive, and read back intact.
func TestQemuIOWriteInParts(t *testing.T) {
	ts := startServer(t, Config{})
	dev := &voltest.PartsDevice{Device: voltest.NewMemDevice(64<<20, 4<<20), Parts: true}
	if err := ts.AddTarget(TargetSpec{Name: "parts", VID: 8, Device: dev}); err != nil {
		t.Fatal(err)
	}
	mustQemuIO(t, ts.url("parts"),
		"write -P 0x5a 0 1M",
		"write -P 0xa5 1M 1M",
		"write -P 0x3c 3M 1M",
		"read -P 0x5a 0 1M",
		"read -P 0xa5 1M 1M",
		"read -P 0 2M 1M",
		"read -P 0x3c 3M 1M")
	parts := 0
	for _, w := range dev.Writes() {
		if w.Len < 1<<20 {
			parts++
		}
	}
	if parts == 0 {
		t.Fatalf("no write reached the device in parts: %v", dev.Writes())
	}
	if n := dev.Written(); n != 3<<20 {
		t.Fatalf("the device was given %d bytes for 3 MiB of writes", n)
	}
}
