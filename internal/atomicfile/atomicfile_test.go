package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWrite: the file is replaced whole, no temporary file stays, and a
// failed write leaves the old content.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state")
	for _, s := range []string{"one", "second"} {
		if err := Write(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(p); err != nil || string(b) != s {
			t.Fatalf("read %q (%v), want %q", b, err, s)
		}
	}
	if _, err := os.Stat(p + ".tmp"); !os.IsNotExist(err) {
		t.Fatalf("temporary file left: %v", err)
	}
	if err := os.Mkdir(p+".tmp", 0o755); err != nil { // the write cannot happen
		t.Fatal(err)
	}
	if err := Write(p, []byte("third"), 0o644); err == nil {
		t.Fatal("write over a directory succeeded")
	}
	if b, _ := os.ReadFile(p); string(b) != "second" {
		t.Fatalf("after a failed write: %q, want the old content", b)
	}
}
