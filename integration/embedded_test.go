package integration

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The README's one-command start, `sheep --format 1 --create vol0:SIZE`,
// must give a volume that takes I/O at once: the format used to wipe the
// store just after the volume's inode was written, and every iSCSI write
// then failed with a medium error. The race detector's slowness hides
// that race, so this test runs a plain build.
func TestEmbeddedFormatAndCreate(t *testing.T) {
	needCluster(t)
	for _, tool := range []string{"qemu-io", "iscsi-ls"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed (scripts/deps installs it)", tool)
		}
	}
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", dir+"/", "../cmd/sheep")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// Each start is a fresh chance for the race.
	for i := range 3 {
		startEmbedded(t, filepath.Join(dir, "sheep"), filepath.Join(dir, fmt.Sprint("d", i)))
	}
}

func startEmbedded(t *testing.T, sheep, dir string) {
	ip := loopback(t) + "1"
	cmd := exec.Command(sheep, "--dir", dir, "--listen", ip+":7000", "--format", "1", "--create", "vol0:64M")
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		if t.Failed() {
			t.Logf("sheep log:\n%s", tail(log.String(), 40))
		}
	}()
	// The first I/O must work: wait for the target to be listed (a
	// discovery session), not opened (an inode read would rebuild a wiped
	// inode and hide the bug).
	waitFor(t, "vol0 listed by the iSCSI portal", 30*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", ip+":3260", time.Second)
		if err != nil {
			return false
		}
		c.Close()
		out, _ := exec.Command("iscsi-ls", "iscsi://"+ip+":3260/").CombinedOutput()
		return strings.Contains(string(out), "iqn.2026-11.io.gosheep:vol0")
	})
	url := "iscsi://" + ip + ":3260/iqn.2026-11.io.gosheep:vol0/0"
	out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x5c 1M 1M", "-c", "read -P 0x5c 1M 1M", url).CombinedOutput()
	s := string(out)
	if err != nil || strings.Contains(s, "failed") || !strings.Contains(s, "wrote 1048576/1048576") || !strings.Contains(s, "read 1048576/1048576") {
		t.Fatalf("qemu-io on a fresh --create volume: %v\n%s", err, s)
	}
}
