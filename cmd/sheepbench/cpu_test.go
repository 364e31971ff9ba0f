package main

import (
	"os"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	// A command name with spaces and a parenthesis; utime 150, stime 250
	// ticks (fields 14 and 15), then more fields.
	line := []byte("4242 (sheep (x) y) S 1 4242 4242 0 -1 4194560 5000 0 0 0 150 250 0 0 20 0 9 0 100 0 0\n")
	got, err := parseProcStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if want := 4 * time.Second; got != want {
		t.Fatalf("got %v, want %v", got, want)
	}
	for _, bad := range []string{"", "4242 sheep S 1", "4242 (sheep) S 1 2 3", "4242 (sheep) S 1 4242 4242 0 -1 0 0 0 0 0 x 250 0"} {
		if _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestParseMachineStat(t *testing.T) {
	// user nice system idle iowait irq softirq steal: busy = 100+1+50+3+6.
	b := []byte("cpu  100 1 50 9999 77 3 6 500 0 0\ncpu0 50 0 25 5000 30 1 3 250 0 0\n")
	got, err := parseMachineStat(b)
	if err != nil {
		t.Fatal(err)
	}
	if want := 1600 * time.Millisecond; got != want {
		t.Fatalf("got %v, want %v", got, want)
	}
	if _, err := parseMachineStat([]byte("intr 1 2 3\n")); err == nil {
		t.Error("no cpu line: no error")
	}
}

func TestReadCPUOfThisProcess(t *testing.T) {
	before, err := readCPU([]int{os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	// Burn CPU until /proc has counted at least two ticks of it.
	deadline := time.Now().Add(5 * time.Second)
	var after cpuSnap
	for x := uint64(1); ; x = x*6364136223846793005 + 1 {
		if x%(1<<20) == 0 {
			if after, err = readCPU([]int{os.Getpid()}); err != nil {
				t.Fatal(err)
			}
			if after.server-before.server >= 20*time.Millisecond || time.Now().After(deadline) {
				break
			}
		}
	}
	if after.server-before.server < 20*time.Millisecond {
		t.Fatalf("server CPU went from %v to %v while spinning", before.server, after.server)
	}
	if after.machine < after.server-before.server {
		t.Fatalf("machine busy time %v below this process's %v", after.machine, after.server-before.server)
	}
}

func TestPerOp(t *testing.T) {
	s := sample{Ops: 1000}
	s.perOp(cpuSnap{server: time.Second, machine: 3 * time.Second}, cpuSnap{server: 2 * time.Second, machine: 5 * time.Second}, true)
	if s.ServerCPU != 1000 || s.MachineCPU != 2000 {
		t.Fatalf("got server %v machine %v us/op, want 1000 and 2000", s.ServerCPU, s.MachineCPU)
	}
	raw := sample{Ops: 1000}
	raw.perOp(cpuSnap{}, cpuSnap{server: time.Second, machine: time.Second}, false)
	if raw.ServerCPU != 0 || raw.MachineCPU != 1000 {
		t.Fatalf("no server: got server %v machine %v", raw.ServerCPU, raw.MachineCPU)
	}
	none := sample{}
	none.perOp(cpuSnap{}, cpuSnap{machine: time.Second}, true)
	if none.MachineCPU != 0 {
		t.Fatal("no requests: CPU per request set")
	}
}
