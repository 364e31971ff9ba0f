package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// CPU time per request, next to throughput. On a small shared VM the
// throughput of one run swings with the host (up to 2x between runs of the
// same build), while the CPU a request costs moves much less; and on a
// CPU-bound machine the ratio of CPU per request is what the throughput
// ratio converges to. Two views:
//
//   - server: the serving processes only (every sheep, or tgtd / nbdkit);
//   - machine: all CPUs busy time (user, system, interrupts) of the whole
//     machine, which adds the initiator and the kernel's page-cache
//     writeback, the work a write leaves behind that no process is billed
//     for. Other processes running at the same time show up here too.
//
// Both count from just before the client starts to just after it exits, so
// they include its login and final flush.

// userHZ is the unit of /proc's CPU times (USER_HZ, 100 on every Linux
// architecture Go supports: it is part of the ABI, unlike the kernel's HZ).
const userHZ = 100

// cpuSnap is a reading of cumulative CPU time.
type cpuSnap struct {
	server  time.Duration
	machine time.Duration
}

// readCPU reads the CPU time used so far by pids and by the whole machine.
func readCPU(pids []int) (cpuSnap, error) {
	var s cpuSnap
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return s, err
		}
		t, err := parseProcStat(b)
		if err != nil {
			return s, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		s.server += t
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s, err
	}
	if s.machine, err = parseMachineStat(b); err != nil {
		return s, fmt.Errorf("/proc/stat: %w", err)
	}
	return s, nil
}

// parseProcStat returns utime+stime of a /proc/<pid>/stat line (every
// thread of the process, living or exited). The command name, field 2, may
// hold spaces and parentheses: fields are counted after its last ')'.
func parseProcStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("no command name in %q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	// After the name: state is field 3, utime 14, stime 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields after the command name", len(f))
	}
	var ticks uint64
	for _, s := range f[11:13] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += v
	}
	return ticksToDuration(ticks), nil
}

// parseMachineStat returns the busy time of all CPUs from /proc/stat's
// "cpu" line: user, nice, system, irq and softirq (not idle, iowait or
// steal; guest time is already inside user).
func parseMachineStat(b []byte) (time.Duration, error) {
	line, _, _ := bytes.Cut(b, []byte{'\n'})
	f := strings.Fields(string(line))
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("no cpu line in %q", line)
	}
	var ticks uint64
	for _, i := range []int{1, 2, 3, 6, 7} {
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += v
	}
	return ticksToDuration(ticks), nil
}

func ticksToDuration(t uint64) time.Duration { return time.Duration(t) * time.Second / userHZ }

// perOp sets s's CPU per request from readings before and after it.
func (s *sample) perOp(before, after cpuSnap, serverKnown bool) {
	if s.Ops <= 0 {
		return
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / s.Ops }
	if serverKnown {
		s.ServerCPU = us(after.server - before.server)
	}
	s.MachineCPU = us(after.machine - before.machine)
}
