package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// The end-to-end tests build the real sheep (and dog) once, start a
// one-node cluster on a random 127.x.y.z address and drive it with dog,
// in-process through run() and as a separate process.

type harness struct {
	sheep, dogBin string // binaries
	dir           string
	addr          string // host of the sheep (port 7000)
	proc          *exec.Cmd
	exited        chan error
	log           string
}

// The binaries are built once per test binary run.
var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func goTool() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

func buildBinaries() error {
	dir, err := os.MkdirTemp("", "dog-e2e-bin-")
	if err != nil {
		return err
	}
	buildDir = dir
	build := exec.Command(goTool(), "build", "-o", dir, "github.com/gosheep/gosheep/cmd/sheep", "github.com/gosheep/gosheep/cmd/dog")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	return nil
}

// startSheep builds the binaries (once) and starts a one-node cluster,
// stopped when the test ends.
func startSheep(t *testing.T) *harness {
	t.Helper()
	return startNode(t, "")
}

// startCluster starts n nodes joined into one cluster (unformatted).
func startCluster(t *testing.T, n int) []*harness {
	t.Helper()
	nodes := []*harness{startNode(t, "")}
	for i := 1; i < n; i++ {
		nodes = append(nodes, startNode(t, nodes[0].addr+":7002"))
	}
	// Wait until the first node sees them all.
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := nodes[0].dog(t, nil, "-r", "node", "list")
		if r.code == 0 && strings.Count(string(r.out), "\n") == n {
			return nodes
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d nodes did not form a cluster: %s", n, r)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startNode starts one sheep, joining the gossip address join if any, and
// stopped when the test ends. Each of flags returns extra sheep flags for
// the node's address; without flags the node serves no NBD.
func startNode(t *testing.T, join string, flags ...func(addr string) []string) *harness {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: builds and runs sheep (skipped with -short)")
	}
	buildOnce.Do(func() { buildErr = buildBinaries() })
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	h := &harness{sheep: filepath.Join(buildDir, "sheep"), dogBin: filepath.Join(buildDir, "dog"), dir: t.TempDir()}
	var err error
	if h.addr, err = freeLoopback(); err != nil {
		t.Fatal(err)
	}
	h.log = filepath.Join(h.dir, "sheep.log")
	logf, err := os.Create(h.log)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--dir", filepath.Join(h.dir, "data"), "--listen", h.addr + ":7000",
		"--iscsi", "", "--metrics-listen", "", "--capacity", "4G", "--log-level", "warn"}
	if len(flags) == 0 {
		args = append(args, "--nbd", "")
	}
	if join != "" {
		args = append(args, "--join", join)
	}
	for _, f := range flags {
		args = append(args, f(h.addr)...)
	}
	h.proc = exec.Command(h.sheep, args...)
	h.proc.Stdout, h.proc.Stderr = logf, logf
	if err := h.proc.Start(); err != nil {
		t.Fatal(err)
	}
	h.exited = make(chan error, 1)
	go func() { h.exited <- h.proc.Wait(); logf.Close() }()
	t.Cleanup(func() {
		h.proc.Process.Kill()
		<-h.exited
	})
	// Ready when it answers dog (before format, cluster info succeeds).
	deadline := time.Now().Add(30 * time.Second)
	for {
		var out, errb bytes.Buffer
		code := run(context.Background(), []string{"-a", h.addr, "--timeout", "2s", "cluster", "info"},
			env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb})
		if code == 0 {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("sheep at %s not ready: %s\n%s", h.addr, errb.String(), h.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (h *harness) logTail() string {
	b, _ := os.ReadFile(h.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// closedPort returns a local port nothing listens on.
func closedPort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// freeLoopback picks a random 127.x.y.z whose ports 7000..7002 are free.
func freeLoopback() (string, error) {
	for i := 0; i < 50; i++ {
		ip := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), rand.IntN(256), 1+rand.IntN(250))
		ok := true
		var ls []io.Closer
		for _, p := range []string{"7000", "7001", "7002"} {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, p))
			if err != nil {
				ok = false
				break
			}
			ls = append(ls, l)
		}
		if ok {
			u, err := net.ListenPacket("udp", net.JoinHostPort(ip, "7002"))
			if err != nil {
				ok = false
			} else {
				ls = append(ls, u)
			}
		}
		for _, l := range ls {
			l.Close()
		}
		if ok {
			return ip, nil
		}
	}
	return "", fmt.Errorf("no free loopback address")
}

type result struct {
	out, err []byte
	code     int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.code, trunc(r.out), trunc(r.err))
}

func trunc(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "..."
	}
	return string(b)
}

// dog runs dog in-process against the harness's sheep.
func (h *harness) dog(t *testing.T, stdin []byte, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	full := append([]string{"-a", h.addr}, args...)
	code := run(context.Background(), full, env{stdin: bytes.NewReader(stdin), stdout: &out, stderr: &errb, loc: time.UTC})
	return result{out.Bytes(), errb.Bytes(), code}
}

// sum runs dog, hashing its stdout instead of keeping it (VDI reads are
// large), and fails the test unless it exits 0.
func (h *harness) sum(t *testing.T, args ...string) [sha256.Size]byte {
	t.Helper()
	sum := sha256.New()
	var errb bytes.Buffer
	full := append([]string{"-a", h.addr}, args...)
	if code := run(context.Background(), full, env{stdin: bytes.NewReader(nil), stdout: sum, stderr: &errb, loc: time.UTC}); code != 0 {
		t.Fatalf("dog %s: exit %d: %s", strings.Join(args, " "), code, errb.String())
	}
	return [sha256.Size]byte(sum.Sum(nil))
}

// ok runs dog and fails the test unless it exits 0.
func (h *harness) ok(t *testing.T, stdin []byte, args ...string) []byte {
	t.Helper()
	r := h.dog(t, stdin, args...)
	if r.code != 0 {
		t.Fatalf("dog %s: %s\nsheep log:\n%s", strings.Join(args, " "), r, h.logTail())
	}
	return r.out
}

// exit runs dog and checks its exit code.
func (h *harness) exit(t *testing.T, want int, stdin []byte, args ...string) result {
	t.Helper()
	r := h.dog(t, stdin, args...)
	if r.code != want {
		t.Fatalf("dog %s: %s; want exit %d", strings.Join(args, " "), r, want)
	}
	if want != 0 && (len(r.err) == 0 || bytes.Count(bytes.TrimSpace(r.err), []byte("\n")) != 0) {
		t.Errorf("dog %s: want one line on stderr, got %q", strings.Join(args, " "), r.err)
	}
	return r
}

// exec runs the dog binary as its own process.
func (h *harness) exec(t *testing.T, stdin io.Reader, args ...string) result {
	t.Helper()
	cmd := exec.Command(h.dogBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("dog %v: %v", args, err)
	}
	return result{out.Bytes(), errb.Bytes(), code}
}

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 7})
	r.Read(b)
	return b
}
