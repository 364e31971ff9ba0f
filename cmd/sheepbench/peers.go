package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// peerSet is what we compare against.
type peerSet struct {
	tgt    *tgt
	nbdkit *proc
	nbdURI string
	raw    rawFile
}

// tgt is a tgtd serving one plain file as LUN 1, the way real-clients.md
// describes. tgtd ignores SIGTERM; it is stopped through its control
// socket, which lives under a control port of our own so that another
// tgtd on the machine is left alone.
type tgt struct {
	p    *proc
	ctl  string
	url  string
	once sync.Once
}

const tgtIQN = "iqn.2026-11.io.gosheep.bench:peer"

// tgtParams, with the malloc settings in startTgt, make tgt a fair peer: the same negotiation limits our
// target offers (tgt's defaults are 8 KiB data segments, 64/256 KiB
// bursts), and a glibc malloc that reuses command buffers: by default
// each buffer of 128 KiB or more is a fresh mmap, and the page faults of
// filling it cost tgtd ~7 s of system time per GiB read on this VM.
var tgtParams = [][2]string{
	{"MaxRecvDataSegmentLength", "262144"},
	{"MaxXmitDataSegmentLength", "262144"},
	{"MaxBurstLength", "1048576"},
	{"FirstBurstLength", "262144"},
}

func startTgt(ctx context.Context, pr *procs, dir, ip, img string, stock bool) (*tgt, error) {
	if err := os.MkdirAll("/var/run/tgtd", 0o755); err != nil {
		return nil, fmt.Errorf("tgtd needs /var/run/tgtd (run as root): %w", err)
	}
	// A control port nobody uses: its socket file does not exist.
	ctl := ""
	for range 100 {
		n := strconv.Itoa(1000 + rand.IntN(30000)) // tgtd takes at most 32767
		if _, err := os.Stat("/var/run/tgtd/socket." + n); os.IsNotExist(err) {
			ctl = n
			break
		}
	}
	if ctl == "" {
		return nil, fmt.Errorf("no free tgtd control port")
	}
	os.WriteFile(dir+"/tgt-control", []byte(ctl+"\n"), 0o644)
	tgtd, err := lookPath("tgtd")
	if err != nil {
		return nil, err
	}
	var env []string
	if !stock {
		env = []string{"MALLOC_MMAP_THRESHOLD_=33554432", "MALLOC_TRIM_THRESHOLD_=268435456"}
	}
	p, err := pr.startEnv("tgtd.log", env, tgtd, "-f", "-C", ctl, "--iscsi", "portal="+ip+":3260")
	if err != nil {
		return nil, err
	}
	t := &tgt{p: p, ctl: ctl, url: "iscsi://" + ip + ":3260/" + tgtIQN + "/1"}
	if err := waitListening(ctx, p, ip+":3260", 10*time.Second); err != nil {
		t.stop()
		return nil, err
	}
	cmds := [][]string{
		{"--op", "new", "--mode", "target", "--tid", "1", "-T", tgtIQN},
		{"--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", img},
		{"--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"},
	}
	if !stock {
		for _, kv := range tgtParams {
			cmds = append(cmds, []string{"--op", "update", "--mode", "target", "--tid", "1", "--name", kv[0], "--value", kv[1]})
		}
	}
	for _, args := range cmds {
		if err := t.adm(args...); err != nil {
			t.stop()
			return nil, err
		}
	}
	return t, nil
}

func (t *tgt) adm(args ...string) error {
	adm, err := lookPath("tgtadm")
	if err != nil {
		return err
	}
	out, err := exec.Command(adm, append([]string{"-C", t.ctl, "--lld", "iscsi"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("tgtadm %v: %w: %s", args, err, bytes.TrimSpace(out))
	}
	return nil
}

// stop deletes the target (forcibly: a crashed initiator may still be
// logged in), then the system, which makes tgtd exit.
func (t *tgt) stop() {
	t.once.Do(func() {
		t.adm("--op", "delete", "--mode", "target", "--tid", "1", "--force")
		t.adm("--mode", "system", "--op", "delete")
		t.p.stop(syscall.SIGKILL, 5*time.Second)
		// tgtd leaves its control socket behind.
		os.Remove("/var/run/tgtd/socket." + t.ctl)
		os.Remove("/var/run/tgtd/socket." + t.ctl + ".lock")
	})
}

// startNbdkit serves img with nbdkit's file plugin (multi-threaded, page
// cache like tgt and sheep).
func startNbdkit(ctx context.Context, pr *procs, ip, img string) (*proc, string, error) {
	nbdkit, err := lookPath("nbdkit")
	if err != nil {
		return nil, "", err
	}
	p, err := pr.start("nbdkit.log", nbdkit, "-f", "-i", ip, "-p", "10809", "file", img)
	if err != nil {
		return nil, "", err
	}
	if err := waitListening(ctx, p, ip+":10809", 10*time.Second); err != nil {
		p.stop(syscall.SIGTERM, 5*time.Second)
		return nil, "", err
	}
	return p, "nbd://" + ip + ":10809/", nil
}

// rawFile is the raw-disk baseline: fio on a file in the filesystem that
// holds the data directories.
type rawFile struct {
	path   string
	direct bool // O_DIRECT works here (libaio); else psync through the page cache
}

func newRawFile(path string) rawFile {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_DIRECT, 0)
	if err == nil {
		syscall.Close(fd)
	}
	return rawFile{path: path, direct: err == nil}
}

// fillFile writes size bytes of incompressible data to path and syncs it,
// so that the peers read real blocks, not holes.
func fillFile(ctx context.Context, path string, size uint64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := randomBuf(1 << 20)
	for off := uint64(0); off < size; off += uint64(len(buf)) {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := f.Write(buf); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

func randomBuf(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{'g', 'o', 's', 'h', 'e', 'e', 'p'})
	r.Read(b)
	return b
}

// waitServed waits until qemu-img can open url and sees size bytes.
func waitServed(ctx context.Context, url string, size uint64) error {
	var last []byte
	err := poll(ctx, 30*time.Second, url, func() (bool, error) {
		out, err := exec.CommandContext(ctx, "qemu-img", "info", "--output=json", url).CombinedOutput()
		last = out
		if err != nil {
			return false, nil
		}
		var info struct {
			Size uint64 `json:"virtual-size"`
		}
		if json.Unmarshal(out, &info) != nil {
			return false, nil
		}
		if info.Size != size {
			return false, fmt.Errorf("%s: size %d, want %d", url, info.Size, size)
		}
		return true, nil
	})
	if err != nil && len(last) > 0 {
		err = fmt.Errorf("%w: %s", err, bytes.TrimSpace(last))
	}
	return err
}
