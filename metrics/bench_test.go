package metrics

import (
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

// BenchmarkRequest is the per-I/O cost every front end pays.
func BenchmarkRequest(b *testing.B) {
	m := New(nil, nil)
	b.ReportAllocs()
	for b.Loop() {
		m.Request(FrontendISCSI, "WRITE(10)", 4096, 180*time.Microsecond, nil)
	}
}

func BenchmarkRequestError(b *testing.B) {
	m := New(nil, nil)
	b.ReportAllocs()
	for b.Loop() {
		m.Request(FrontendNative, "READ_OBJ", 0, 80*time.Microsecond, proto.ResNoObj)
	}
}

func BenchmarkRequestParallel(b *testing.B) {
	m := New(nil, nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Request(FrontendNBD, "read", 4096, 120*time.Microsecond, nil)
		}
	})
}
