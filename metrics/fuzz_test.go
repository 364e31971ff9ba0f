package metrics

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gosheep/gosheep/proto"
)

// FuzzRequestLabels: whatever strings and result codes a client provokes,
// Request never panics and the series stay within the fixed tables.
func FuzzRequestLabels(f *testing.F) {
	for _, s := range []struct {
		fe, op string
		code   uint32
	}{
		{"nbd", "read", 0}, {"iscsi", "WRITE(10)", 3}, {"native", "READ_OBJ", 0x81},
		{"peer", "WRITE_PEER", 0x99}, {"", "", 0xffffffff}, {"nbd\x00", "READ(10) ", 0x1b},
	} {
		f.Add(s.fe, s.op, s.code, int64(4096), int64(time.Millisecond))
	}
	m := New(nil, nil)
	f.Fuzz(func(t *testing.T, fe, op string, code uint32, n, d int64) {
		var err error
		switch code % 3 {
		case 1:
			err = proto.Result(code)
		case 2:
			err = errors.Join(errors.New(op), proto.Result(code>>2))
		}
		m.Request(fe, op, int(n), time.Duration(d), err)
		m.Sessions(fe, int(n%3)-1)
		m.ScrubFinding(op)
		m.RecoveryObject(op)
		m.PanicRecovered(fe)
		if i := opIndex(op); i < 0 || i >= numOps {
			t.Fatalf("op index %d", i)
		}
		if err != nil {
			if i := resultIndex(err); i < 0 || i >= numResults {
				t.Fatalf("result index %d", i)
			}
		}
		if c := testutil.CollectAndCount(m.requests); c > numFrontends*numOps {
			t.Fatalf("%d request series", c)
		}
		if c := testutil.CollectAndCount(m.errs); c > numFrontends*numOps*numResults {
			t.Fatalf("%d error series", c)
		}
		if c := testutil.CollectAndCount(m.panics); c > len(panicComponents)+1 {
			t.Fatalf("%d panic series", c)
		}
	})
}
