// Package units parses and prints sizes the way sheepdog's dog does:
// binary suffixes on input ("10G", "512M", "4k", bytes without one) and
// "%.1f MB"/"%.0f GB" style output.
package units

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ErrBadSize reports an unparsable size.
var ErrBadSize = errors.New("invalid size")

// ParseSize parses "1048576", "4k", "512M", "10G", "1.5T", "2P" (powers of 1024,
// optional trailing "B"/"iB"). It rejects negative, empty and overflowing sizes.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("%w %q: empty", ErrBadSize, s)
	}
	u := strings.ToUpper(t)
	u = strings.TrimSuffix(u, "IB")
	if len(u) > 1 {
		u = strings.TrimSuffix(u, "B")
	}
	mult := 1.0
	if n := len(u); n > 0 {
		switch u[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		case 'P':
			mult = 1 << 50
		case 'E':
			mult = 1 << 60
		}
		if mult != 1 {
			u = u[:n-1]
		}
	}
	if mult == 1 {
		v, err := strconv.ParseUint(u, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%w %q: want a number with an optional K, M, G, T or P suffix", ErrBadSize, s)
		}
		return v, nil
	}
	f, err := strconv.ParseFloat(u, 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("%w %q: want a number with an optional K, M, G, T or P suffix", ErrBadSize, s)
	}
	v := f * mult
	if v >= math.MaxUint64 {
		return 0, fmt.Errorf("%w %q: too large", ErrBadSize, s)
	}
	return uint64(math.Round(v)), nil
}

// FormatSize prints bytes as dog does: in MB and up, one decimal below 10.
func FormatSize(n uint64) string {
	units := []string{"MB", "GB", "TB", "PB", "EB", "ZB", "YB"}
	size := float64(n) / (1 << 20)
	i := 0
	for i < len(units)-1 && size >= 1024 {
		i++
		size /= 1024
	}
	if size >= 10 {
		return fmt.Sprintf("%.0f %s", size, units[i])
	}
	return fmt.Sprintf("%.1f %s", size, units[i])
}

// Format prints n as FormatSize does, or as a plain byte count when raw.
func Format(n uint64, raw bool) string {
	if raw {
		return strconv.FormatUint(n, 10)
	}
	return FormatSize(n)
}
