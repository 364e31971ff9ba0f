package units

import (
	"errors"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint64
	}{
		{"0", 0}, {"4096", 4096}, {"4k", 4096}, {"4K", 4096}, {"512M", 512 << 20}, {"10G", 10 << 30},
		{"10GB", 10 << 30}, {"10GiB", 10 << 30}, {"1.5T", 3 << 39}, {"2P", 2 << 50}, {" 1g ", 1 << 30},
	} {
		got, err := ParseSize(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "G", "-1", "-1G", "abc", "1X", "99999999999999999999", "1e30P", "NaNG"} {
		if _, err := ParseSize(bad); !errors.Is(err, ErrBadSize) {
			t.Errorf("ParseSize(%q) accepted (err %v)", bad, err)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for _, c := range []struct {
		in   uint64
		want string
	}{
		{0, "0.0 MB"}, {4 << 20, "4.0 MB"}, {10 << 20, "10 MB"}, {10 << 30, "10 GB"}, {1536 << 20, "1.5 GB"}, {4 << 40, "4.0 TB"},
	} {
		if got := FormatSize(c.in); got != c.want {
			t.Errorf("FormatSize(%d) = %q, want %q", c.in, got, c.want)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"10G", "4k", "1.5T", "", "-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { ParseSize(s) })
}
