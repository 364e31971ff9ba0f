package store

import (
	"bufio"
	"crypto/sha1"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

// The kill -9 test runs a real process writing to a store and SIGKILLs it
// at a random moment, several times over the same directory. Unlike the
// errorfs crash test, nothing is simulated: whatever the kernel does to
// pwrites in flight is what the next open sees.

const (
	killEnvDir  = "GOSHEEP_STORE_KILL_DIR"
	killEnvSeed = "GOSHEEP_STORE_KILL_SEED"
	killObjects = 4
	killSize    = 256<<10 + 1000
	killWrites  = 200000
)

type killOp struct {
	obj    int
	kind   int // 0 write, 1 zero, 2 create
	off, n int
	seed   uint64
}

func killOps(seed uint64) func() killOp {
	rng := rand.New(rand.NewPCG(seed, 42))
	i := 0
	return func() killOp {
		i++
		op := killOp{obj: rng.IntN(killObjects), seed: seed<<32 | uint64(i)}
		op.off = rng.IntN(killSize)
		op.n = 1 + rng.IntN(min(killSize-op.off, 64<<10))
		switch r := rng.IntN(100); {
		case r < 85:
			op.kind = 0
		case r < 98:
			op.kind = 1
		default:
			op.kind = 2
		}
		return op
	}
}

func killKey(i int) Key { return ReplicaKey(proto.DataOID(9, uint32(i))) }

func (op killOp) apply(content [][]byte) {
	switch op.kind {
	case 0:
		copy(content[op.obj][op.off:], pattern(op.seed, op.n))
	case 1:
		clear(content[op.obj][op.off : op.off+op.n])
	case 2:
		content[op.obj] = make([]byte, killSize)
		copy(content[op.obj][op.off:], pattern(op.seed, op.n))
	}
}

// TestKill9Helper is the child process; it does nothing in a normal run.
func TestKill9Helper(t *testing.T) {
	dir := os.Getenv(killEnvDir)
	if dir == "" {
		t.Skip("helper process for TestKill9")
	}
	seed, _ := strconv.ParseUint(os.Getenv(killEnvSeed), 10, 64)
	d, err := Open(dir, Options{NoSync: true, MaxOpenFiles: 2})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	next := killOps(seed)
	out := bufio.NewWriter(os.Stdout)
	for i := 0; i < killWrites; i++ {
		op := next()
		k := killKey(op.obj)
		switch op.kind {
		case 0:
			err = d.Write(bg, k, uint32(op.off), pattern(op.seed, op.n), WriteOpts{Epoch: uint32(i)})
		case 1:
			err = d.Zero(bg, k, uint32(op.off), uint32(op.n), WriteOpts{})
		case 2:
			err = d.Create(bg, k, killSize, uint32(op.off), pattern(op.seed, op.n), WriteOpts{})
		}
		if err != nil {
			fmt.Fprintln(out, "ERR", err)
			out.Flush()
			os.Exit(1)
		}
		fmt.Fprintln(out, "ACK", i)
		out.Flush()
	}
	os.Exit(0)
}

func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := t.TempDir()
	content := make([][]byte, killObjects)
	{
		d := openT(t, dir, Options{NoSync: true})
		for i := range content {
			content[i] = pattern(uint64(i), killSize)
			mustCreate(t, d, killKey(i), killSize, 0, content[i])
		}
		d.Close()
	}
	rng := rand.New(rand.NewPCG(5, 5))
	for round := 0; round < 6; round++ {
		seed := uint64(round + 1)
		cmd := exec.Command(os.Args[0], "-test.run=^TestKill9Helper$", "-test.count=1")
		cmd.Env = append(os.Environ(), killEnvDir+"="+dir, killEnvSeed+"="+strconv.FormatUint(seed, 10))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		acks := make(chan int, 1<<16)
		go func() {
			defer close(acks)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				line := sc.Text()
				if n, ok := strings.CutPrefix(line, "ACK "); ok {
					v, _ := strconv.Atoi(n)
					acks <- v
				} else if strings.HasPrefix(line, "ERR") {
					t.Errorf("child: %s", line)
				}
			}
		}()
		// Wait for the child to get going, then kill it at a random moment.
		acked := -1
		select {
		case v, ok := <-acks:
			if !ok {
				cmd.Wait()
				t.Fatal("child exited before writing")
			}
			acked = v
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatal("child never started writing")
		}
		time.Sleep(time.Duration(5+rng.IntN(60)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		for v := range acks {
			acked = v
		}
		cmd.Wait()
		if acked >= killWrites-1 {
			t.Fatalf("child finished all %d writes before the kill", killWrites)
		}

		// Every block must read without error and hold its content from
		// after some op j >= acked (acks may lag the writes by a little).
		next := killOps(seed)
		for i := 0; i <= acked; i++ {
			next().apply(content)
		}
		const bpo = killSize/4096 + 1 // blocks per object
		valid := make([]map[[20]byte]bool, killObjects*bpo)
		note := func(o, b0, b1 int) {
			for b := b0; b <= b1 && b*4096 < killSize; b++ {
				if valid[o*bpo+b] == nil {
					valid[o*bpo+b] = map[[20]byte]bool{}
				}
				valid[o*bpo+b][sha1.Sum(content[o][b*4096:min(b*4096+4096, killSize)])] = true
			}
		}
		for o := range content {
			note(o, 0, bpo)
		}
		// The kill lands within a few ms of the last ack we read.
		for i := acked + 1; i < min(acked+3000, killWrites); i++ {
			op := next()
			op.apply(content)
			if op.kind == 2 {
				note(op.obj, 0, bpo)
			} else {
				note(op.obj, op.off/4096, (op.off+op.n-1)/4096)
			}
		}
		d := openT(t, dir, Options{NoSync: true})
		for o := range content {
			k := killKey(o)
			got := make([]byte, killSize)
			for b := 0; b*4096 < killSize; b++ {
				e := min(b*4096+4096, killSize)
				if err := d.Read(bg, k, uint32(b*4096), got[b*4096:e]); err != nil {
					t.Fatalf("round %d (killed after ack %d): %v", round, acked, err)
				}
				if !valid[o*bpo+b][sha1.Sum(got[b*4096:e])] {
					t.Fatalf("round %d (killed after ack %d): object %d block %d holds data never written there", round, acked, o, b)
				}
			}
			if err := d.Verify(bg, k); err != nil {
				t.Fatal(err)
			}
			content[o] = got
		}
		d.Close()
		t.Logf("round %d: killed after %d acknowledged ops", round, acked+1)
	}
}
