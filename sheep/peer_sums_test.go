package sheep

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

func TestSplitSums(t *testing.T) {
	data := bytes.Repeat([]byte{0xa5}, 2*store.SumBlock)
	sums := store.BlockSums(nil, data)
	payload := append(append([]byte(nil), data...), sumBytes(sums)...)
	gotData, gotSums, err := splitSums(payload, 8192)
	if err != nil || !bytes.Equal(gotData, data) || len(gotSums) != 2 || gotSums[0] != sums[0] || gotSums[1] != sums[1] {
		t.Fatalf("round trip: %v", err)
	}
	if binary.LittleEndian.Uint32(payload[len(data):]) != sums[0] {
		t.Fatal("sums are not little-endian after the data")
	}
	for _, tc := range []struct {
		name string
		p    []byte
		off  uint32
	}{
		{"empty", nil, 0},
		{"data without sums", data, 0},
		{"one byte short", payload[:len(payload)-1], 0},
		{"unaligned offset", payload, 512},
	} {
		if _, _, err := splitSums(tc.p, tc.off); !errors.Is(err, proto.ResInvalidParms) {
			t.Errorf("%s: %v, want ResInvalidParms", tc.name, err)
		}
	}
}
