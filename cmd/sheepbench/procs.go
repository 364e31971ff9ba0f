package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// procs starts the long-lived servers (sheep, tgtd, nbdkit) and stops them
// all on the way out. Each runs in its own process group, so a Ctrl-C at the
// terminal reaches sheepbench, which then stops them in order (a sheep
// writes its CPU profile on a clean stop). Their pids also go to <dir>/pids
// so that scripts/bench can kill leftovers should sheepbench itself die.
type procs struct {
	dir string
	log io.Writer

	mu   sync.Mutex
	list []*proc
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	logf string
}

func newProcs(dir string, log io.Writer) *procs { return &procs{dir: dir, log: log} }

// start runs name with args, its output going to <dir>/<logName>.
func (p *procs) start(logName, name string, args ...string) (*proc, error) {
	return p.startEnv(logName, nil, name, args...)
}

// startEnv is start with extra environment variables.
func (p *procs) startEnv(logName string, env []string, name string, args ...string) (*proc, error) {
	lf := filepath.Join(p.dir, logName)
	out, err := os.Create(lf)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	pr := &proc{name: logName, cmd: cmd, done: make(chan struct{}), logf: lf}
	go func() {
		cmd.Wait()
		out.Close()
		close(pr.done)
	}()
	p.mu.Lock()
	p.list = append(p.list, pr)
	p.mu.Unlock()
	if f, err := os.OpenFile(filepath.Join(p.dir, "pids"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
		fmt.Fprintln(f, cmd.Process.Pid)
		f.Close()
	}
	return pr, nil
}

// pid is the process id, 0 for none.
func (pr *proc) pid() int {
	if pr == nil || pr.cmd.Process == nil {
		return 0
	}
	return pr.cmd.Process.Pid
}

// exited reports whether the process has ended.
func (pr *proc) exited() bool {
	select {
	case <-pr.done:
		return true
	default:
		return false
	}
}

// stop sends sig, waits up to d, then kills.
func (pr *proc) stop(sig syscall.Signal, d time.Duration) {
	if pr.exited() {
		return
	}
	pr.cmd.Process.Signal(sig)
	select {
	case <-pr.done:
	case <-time.After(d):
		pr.cmd.Process.Kill()
		<-pr.done
	}
}

// tail is the end of the process's log, for error messages.
func (pr *proc) tail(n int) string {
	b, err := os.ReadFile(pr.logf)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func (p *procs) stopAll() {
	p.mu.Lock()
	list := p.list
	p.list = nil
	p.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		list[i].stop(syscall.SIGTERM, 10*time.Second)
	}
}

// subnet is where this run listens: one loopback /24 nobody else uses, so
// the default ports stay free for a user's cluster and parallel test runs.
type subnet struct {
	base string // "127.a.b." — node i listens on base+i
	peer string // tgt and nbdkit
}

// pickSubnet finds a loopback /24 whose ports are all free.
func pickSubnet(nodes int) (subnet, error) {
	ports := []int{7000, 7001, 7002, 3260, 10809, 9100}
	for range 50 {
		base := fmt.Sprintf("127.%d.%d.", 100+rand.IntN(150), rand.IntN(250))
		s := subnet{base: base, peer: base + "200"}
		ok := free(s.peer, 3260, 10809)
		for i := 1; ok && i <= nodes; i++ {
			ok = free(base+strconv.Itoa(i), ports...)
		}
		if ok {
			return s, nil
		}
	}
	return subnet{}, errors.New("no free loopback /24 found")
}

func free(ip string, ports ...int) bool {
	for _, p := range ports {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(p)))
		if err != nil {
			return false
		}
		l.Close()
	}
	return true
}

// waitListening polls addr until it accepts or ctx ends, failing early if
// the process exits.
func waitListening(ctx context.Context, pr *proc, addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		if pr != nil && pr.exited() {
			return fmt.Errorf("%s exited during start-up:\n%s", pr.name, pr.tail(2000))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after %v", pr.name, addr, d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// lookPath is exec.LookPath that also searches the sbin directories
// (tgtd lives in /usr/sbin, not on every user's PATH).
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}
