package nbd

// Tests with the real NBD clients a user would run: qemu-img, qemu-io,
// nbdinfo, nbdcopy (libnbd) and fio's nbd engine, against an in-process
// server on 127.0.0.1 backed by voltest.MemDevice.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gosheep/gosheep/volume/voltest"
)

const (
	realObj  = 4 << 20 // sheepdog's object size
	realSize = 64 << 20
)

// needTool finds a client binary: a missing one skips only under -short.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if testing.Short() {
			t.Skipf("%s not installed (apt-get install qemu-utils libnbd-bin fio nbdkit)", name)
		}
		t.Fatalf("%s not installed (apt-get install qemu-utils libnbd-bin fio nbdkit); needed unless -short", name)
	}
	return p
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, needTool(t, name), args...)
	cmd.Dir = t.TempDir() // fio leaves verify state files behind
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

type realFixture struct {
	base string // nbd://127.0.0.1:PORT
	disk *voltest.MemDevice
	exps *testExports
	srv  *Server
}

func (f *realFixture) uri(name string) string { return f.base + "/" + name }

func realServer(t *testing.T) *realFixture {
	exps := newTestExports()
	disk := voltest.NewMemDevice(realSize, realObj)
	exps.add("disk", "gosheep test VDI", false, disk)
	exps.add("snap", "read-only snapshot", true, voltest.NewMemDevice(realSize, realObj))
	addr, srv := startServer(t, Config{Exports: exps})
	return &realFixture{base: "nbd://" + addr, disk: disk, exps: exps, srv: srv}
}

// randomImage writes a raw image of random data with two zero regions: one
// whole object (object 3) and one unaligned 64 KiB run inside object 10.
func randomImage(t *testing.T) (string, []byte) {
	b := make([]byte, realSize)
	r := rand.NewChaCha8([32]byte{1, 2, 3})
	r.Read(b)
	clear(b[3*realObj : 4*realObj])
	clear(b[10*realObj+4096 : 10*realObj+4096+65536])
	p := filepath.Join(t.TempDir(), "src.img")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, b
}

func sameFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		n := 0
		for n < len(got) && n < len(want) && got[n] == want[n] {
			n++
		}
		t.Fatalf("%s differs (len %d vs %d, first difference at %d)", path, len(got), len(want), n)
	}
}

func (f *realFixture) deviceEquals(t *testing.T, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if err := f.disk.ReadAt(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("export content differs from the source image")
	}
}

type mapEntry struct {
	off, n uint64
	typ    int
	desc   string
}

// nbdinfoMap parses `nbdinfo --map`: "offset length type description".
func nbdinfoMap(t *testing.T, uri string) []mapEntry {
	t.Helper()
	var out []mapEntry
	for _, line := range strings.Split(strings.TrimSpace(run(t, "nbdinfo", "--map", uri)), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			t.Fatalf("bad map line %q", line)
		}
		off, _ := strconv.ParseUint(f[0], 10, 64)
		n, _ := strconv.ParseUint(f[1], 10, 64)
		typ, _ := strconv.Atoi(f[2])
		out = append(out, mapEntry{off, n, typ, f[3]})
	}
	return out
}

func TestQemuImgInfo(t *testing.T) {
	f := realServer(t)
	var info struct {
		VirtualSize uint64 `json:"virtual-size"`
		Format      string `json:"format"`
	}
	out := run(t, "qemu-img", "info", "--output=json", f.uri("disk"))
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if info.VirtualSize != realSize || info.Format != "raw" {
		t.Fatalf("qemu-img info: %+v", info)
	}
}

func TestQemuImgConvertRoundTrip(t *testing.T) {
	f := realServer(t)
	src, want := randomImage(t)
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, f.uri("disk"))
	f.deviceEquals(t, want)
	// The all-zero object was written as zeroes, not data, so it is still
	// a hole; the unaligned zero run lives inside a data object.
	if n := f.disk.AllocatedObjects(); n != realSize/realObj-1 {
		t.Fatalf("%d objects allocated, want %d", n, realSize/realObj-1)
	}
	out := filepath.Join(t.TempDir(), "out.img")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", f.uri("disk"), out)
	sameFile(t, out, want)
}

func TestQemuIo(t *testing.T) {
	f := realServer(t)
	const M = 1 << 20
	out := run(t, "qemu-io", "-f", "raw", f.uri("disk"),
		"-c", "write -P 0xab 0 1M",
		"-c", "read -P 0xab 0 1M",
		"-c", "write -P 0xcd 5M 3M",
		"-c", "write -P 0xee 8M 8M",
		"-c", "write -P 0x11 20M 4M",
		"-c", "read -P 0xcd 5M 3M",
		"-c", "read -P 0 4M 1M",
		// Unaligned writes and a read crossing them.
		"-c", "write -P 0x77 40961 3333",
		"-c", "read -P 0x77 40961 3333",
		"-c", "read -P 0xab 0 40961",
		"-c", "discard 0 4M",
		"-c", "read -P 0 0 4M",
		"-c", "write -z 8M 4M", // NO_HOLE: stays allocated
		"-c", "write -z -u 12M 4M", // may punch a hole
		"-c", "read -P 0 8M 8M",
		"-c", "write -z -u 20M 4M",
		"-c", "read -P 0 20M 4M",
		"-c", "flush",
	)
	if strings.Contains(out, "fail") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	got := nbdinfoMap(t, f.uri("disk"))
	want := []mapEntry{
		{0, 4 * M, 3, "hole,zero"},
		{4 * M, 8 * M, 0, "data"},
		{12 * M, realSize - 12*M, 3, "hole,zero"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("nbdinfo --map:\n got %v\nwant %v", got, want)
	}
	// A failing pattern check is reported (the test above can fail).
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	bad, _ := exec.CommandContext(ctx, "qemu-io", "-f", "raw", f.uri("disk"), "-c", "read -P 0x42 4M 4k").CombinedOutput()
	if !strings.Contains(string(bad), "Pattern verification failed") {
		t.Fatalf("wrong pattern not detected:\n%s", bad)
	}
	// qemu sees NBD_FLAG_READ_ONLY and refuses to open the snapshot for
	// writing (EPERM for writes that get sent anyway is a protocol test).
	bad, err := exec.CommandContext(ctx, "qemu-io", "-f", "raw", f.uri("snap"), "-c", "write -P 1 0 4k").CombinedOutput()
	if err == nil || !strings.Contains(string(bad), "Permission denied") {
		t.Fatalf("write to read-only export: %v\n%s", err, bad)
	}
	run(t, "qemu-io", "-r", "-f", "raw", f.uri("snap"), "-c", "read -P 0 0 1M")
}

func TestNbdinfo(t *testing.T) {
	f := realServer(t)
	var list struct {
		Protocol   string `json:"protocol"`
		Structured bool   `json:"structured"`
		Exports    []struct {
			Name        string   `json:"export-name"`
			Description string   `json:"description"`
			ReadOnly    bool     `json:"is_read_only"`
			Contexts    []string `json:"contexts"`
		} `json:"exports"`
	}
	out := run(t, "nbdinfo", "--list", "--json", f.base)
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(list.Exports) != 2 || list.Exports[0].Name != "disk" || list.Exports[0].Description != "gosheep test VDI" ||
		list.Exports[1].Name != "snap" || !list.Exports[1].ReadOnly || list.Exports[0].ReadOnly {
		t.Fatalf("nbdinfo --list: %s", out)
	}
	plain := run(t, "nbdinfo", "--list", f.base)
	if !strings.Contains(plain, `export="disk"`) || !strings.Contains(plain, `export="snap"`) {
		t.Fatalf("nbdinfo --list:\n%s", plain)
	}

	var info struct {
		Protocol   string `json:"protocol"`
		TLS        bool   `json:"TLS"`
		Structured bool   `json:"structured"`
		Exports    []map[string]any
	}
	out = run(t, "nbdinfo", "--json", f.uri("disk"))
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if info.Protocol != "newstyle-fixed" || info.TLS || !info.Structured || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json: %s", out)
	}
	e := info.Exports[0]
	for k, v := range map[string]any{
		"export-name": "disk", "export-size": float64(realSize), "is_read_only": false,
		"can_flush": true, "can_fua": true, "can_trim": true, "can_zero": true, "can_fast_zero": true,
		"can_multi_conn": true, "can_cache": true, "can_df": true,
		"block_size_minimum": float64(1), "block_size_preferred": float64(4096), "block_size_maximum": float64(32 << 20),
	} {
		if e[k] != v {
			t.Errorf("nbdinfo --json %s = %v, want %v", k, e[k], v)
		}
	}
	if fmt.Sprint(e["contexts"]) != "[base:allocation]" {
		t.Errorf("contexts %v", e["contexts"])
	}
	// With two exports there is no default export.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "nbdinfo", f.base).CombinedOutput(); err == nil {
		t.Fatalf("nbdinfo of the default export with two exports succeeded:\n%s", out)
	}
	// With one, "" is it.
	f.exps.remove("snap")
	if out := run(t, "nbdinfo", "--size", f.base); strings.TrimSpace(out) != strconv.Itoa(realSize) {
		t.Fatalf("nbdinfo --size default export: %q", out)
	}
}

func TestNbdcopy(t *testing.T) {
	f := realServer(t)
	src, want := randomImage(t)
	run(t, "nbdcopy", src, f.uri("disk"))
	f.deviceEquals(t, want)
	out := filepath.Join(t.TempDir(), "out.img")
	run(t, "nbdcopy", f.uri("disk"), out)
	sameFile(t, out, want)
	// Copy between two exports of the same server, several connections each.
	dst := voltest.NewMemDevice(realSize, realObj)
	f.exps.add("copy", "", false, dst)
	run(t, "nbdcopy", "--connections=4", "--requests=16", f.uri("disk"), f.uri("copy"))
	got := make([]byte, realSize)
	dst.ReadAt(context.Background(), got, 0)
	if !bytes.Equal(got, want) {
		t.Fatal("export-to-export copy differs")
	}
}

func TestFioVerify(t *testing.T) {
	f := realServer(t)
	// Two jobs, each on its own connection and half of the export:
	// random 4k writes at depth 16, and mixed sizes at depth 32.
	out := run(t, "fio", "--ioengine=nbd", "--uri="+f.uri("disk"), "--verify=crc32c",
		"--do_verify=1", "--verify_fatal=1", "--output-format=terse", "--terse-version=3",
		"--name=small", "--rw=randwrite", "--bs=4k", "--iodepth=16", "--offset=0", "--size=32M",
		"--name=mixed", "--rw=randwrite", "--bsrange=512-1M", "--iodepth=32", "--offset=32M", "--size=32M")
	if strings.Contains(out, "verify") && strings.Contains(out, "bad") {
		t.Fatalf("fio verify failed:\n%s", out)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		fields := strings.Split(line, ";")
		if len(fields) < 5 || fields[0] != "3" {
			continue
		}
		if fields[4] != "0" { // terse v3: field 5 is the job's error
			t.Fatalf("fio job %s error %s", fields[2], fields[4])
		}
	}
	if f.disk.AllocatedObjects() == 0 {
		t.Fatal("fio wrote nothing")
	}
}

// TestFileDevice checks the benchmark's file-backed device through the
// server, so the benchmark measures a correct configuration.
func TestFileDevice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dev.img")
	dev, err := newFileDevice(path, realSize)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.f.Close()
	exps := newTestExports()
	exps.add("file", "", false, dev)
	addr, _ := startServer(t, Config{Exports: exps})
	uri := "nbd://" + addr + "/file"
	out := run(t, "qemu-io", "-f", "raw", uri,
		"-c", "write -P 0x61 0 12M", "-c", "discard 4M 4M", "-c", "write -z -u 9M 1M",
		"-c", "read -P 0 4M 4M", "-c", "read -P 0x61 0 4M", "-c", "read -P 0 9M 1M", "-c", "flush")
	if strings.Contains(out, "fail") {
		t.Fatal(out)
	}
	const M = 1 << 20
	got := nbdinfoMap(t, uri)
	want := []mapEntry{{0, 4 * M, 0, "data"}, {4 * M, 4 * M, 3, "hole,zero"}, {8 * M, 4 * M, 0, "data"}, {12 * M, realSize - 12*M, 3, "hole,zero"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("map %v, want %v", got, want)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want2 := make([]byte, realSize)
	for i := range 12 * M {
		want2[i] = 0x61
	}
	clear(want2[4*M : 8*M])
	clear(want2[9*M : 10*M])
	if !bytes.Equal(b, want2) {
		t.Fatal("file content differs")
	}
}
