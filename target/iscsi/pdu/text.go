package pdu

import (
	"bytes"
	"errors"
	"fmt"

	gotgtutil "github.com/gostor/gotgt/pkg/util"
)

// Limits on text negotiation (RFC 7143 §6.1: keys ≤ 63 bytes; values of
// standard keys ≤ 255 bytes unless stated, CHAP binary values are longer).
const (
	MaxKeyLen   = 63
	MaxValueLen = 8192
	MaxPairs    = 256
)

// ErrBadText is returned for malformed key=value text.
var ErrBadText = errors.New("pdu: malformed text key=value data")

// KV is one key=value pair, in the order received.
type KV struct {
	Key, Value string
}

// ParseText splits NUL-terminated key=value pairs (RFC 7143 §6). A trailing
// pair without NUL is accepted (some initiators omit it on the last one).
// Duplicate keys, empty keys, keys without '=' and over-long items are
// errors.
func ParseText(data []byte) ([]KV, error) {
	var out []KV
	seen := map[string]bool{}
	for len(data) > 0 {
		item := data
		if i := bytes.IndexByte(data, 0); i >= 0 {
			item, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if len(item) == 0 {
			continue // padding NULs
		}
		eq := bytes.IndexByte(item, '=')
		if eq <= 0 {
			return nil, fmt.Errorf("%w: %q", ErrBadText, trunc(item))
		}
		k, v := string(item[:eq]), item[eq+1:]
		if len(k) > MaxKeyLen || len(v) > MaxValueLen {
			return nil, fmt.Errorf("%w: item too long", ErrBadText)
		}
		if seen[k] {
			return nil, fmt.Errorf("%w: duplicate key %q", ErrBadText, k)
		}
		if len(out) >= MaxPairs {
			return nil, fmt.Errorf("%w: too many keys", ErrBadText)
		}
		seen[k] = true
		out = append(out, KV{k, string(v)})
	}
	return out, nil
}

func trunc(b []byte) []byte {
	if len(b) > 32 {
		return b[:32]
	}
	return b
}

// MarshalText encodes pairs as key=value\0 (gotgt's encoder is correct for
// this and is used as is).
func MarshalText(kvs []KV) []byte {
	conv := make([]gotgtutil.KeyValue, len(kvs))
	for i, kv := range kvs {
		conv[i] = gotgtutil.KeyValue{Key: kv.Key, Value: kv.Value}
	}
	return gotgtutil.MarshalKVText(conv)
}
