package progress

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestLine(t *testing.T) {
	for _, c := range []struct {
		done, total uint64
		width       int
		count       bool
		want        string
	}{
		{0, 100 << 20, 50, false, "  0.0 % [>                   ] 0.0 MB / 100 MB  "},
		{50 << 20, 100 << 20, 50, false, " 50.0 % [==========>         ] 50 MB / 100 MB  "},
		{100 << 20, 100 << 20, 50, false, "100.0 % [====================] 100 MB / 100 MB "},
		{3, 12, 40, true, " 25.0 % [==>       ] 3 / 12              "},
		{0, 0, 40, true, "100.0 % [==========] 0 / 0               "},
		{7, 5, 40, true, "100.0 % [==========] 7 / 7               "},
	} {
		got := Line(c.done, c.total, c.width, c.count)
		// The line is padded with blanks to the full width.
		if strings.TrimRight(got, " ") != strings.TrimRight(c.want, " ") {
			t.Errorf("Line(%d, %d, %d) =\n%q, want\n%q", c.done, c.total, c.width, got, c.want)
		}
		if len(got) != c.width {
			t.Errorf("Line(%d, %d, %d) is %d wide", c.done, c.total, c.width, len(got))
		}
	}
}

func TestBarThrottlesAndFinishes(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(0, 0)
	b := New(&buf, 60, 10)
	b.now = func() time.Time { return now }
	b.Add(1) // draws (first draw)
	b.Add(1) // throttled
	now = now.Add(time.Second)
	b.Add(1) // draws
	if got := strings.Count(buf.String(), "\r"); got != 2 {
		t.Fatalf("%d redraws, want 2: %q", got, buf.String())
	}
	b.Finish()
	b.Finish()
	b.Add(5)
	if !strings.HasSuffix(buf.String(), "\n") || strings.Count(buf.String(), "\n") != 1 {
		t.Fatalf("finish output %q", buf.String())
	}
	var nb *Bar
	nb.Add(1)
	nb.Set(1, 2)
	nb.Finish()
}
