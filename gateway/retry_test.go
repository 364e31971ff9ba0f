package gateway

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

func TestRetryDefaultDeadline(t *testing.T) {
	g := newTestGateway(1)
	g.cfg.DefaultTimeout = 300 * time.Millisecond
	var deadlines []bool
	start := time.Now()
	err := g.retry(context.Background(), opName{op: "write", oid: proto.DataOID(7, 1)}, func(ctx context.Context, v *View) error {
		_, ok := ctx.Deadline()
		deadlines = append(deadlines, ok)
		return proto.ResAgain
	})
	el := time.Since(start)
	if !errors.Is(err, proto.ResNetworkError) || !strings.Contains(err.Error(), "write "+proto.DataOID(7, 1).String()) {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(err.Error(), "last error") {
		t.Errorf("err lacks the last attempt's error: %v", err)
	}
	if el < 300*time.Millisecond {
		t.Errorf("gave up after %v, before DefaultTimeout", el)
	}
	if len(deadlines) < 2 {
		t.Fatalf("%d attempts", len(deadlines))
	}
	// The first attempt runs on the caller's context; retries carry the
	// deadline counted from the start.
	if deadlines[0] || !deadlines[1] {
		t.Errorf("deadline per attempt: %v", deadlines)
	}
}

func TestRetryCallerDeadlineAndOutcomes(t *testing.T) {
	g := newTestGateway(1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	want, _ := ctx.Deadline()
	n := 0
	err := g.retry(ctx, opName{op: "read"}, func(actx context.Context, v *View) error {
		if d, ok := actx.Deadline(); !ok || !d.Equal(want) {
			t.Errorf("attempt deadline %v %v, want the caller's %v", d, ok, want)
		}
		n++
		if n < 3 {
			return proto.ResAgain
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("err %v after %d attempts", err, n)
	}
	n = 0
	err = g.retry(ctx, opName{op: "read"}, func(context.Context, *View) error {
		n++
		return proto.ResNoObj // for good
	})
	if !errors.Is(err, proto.ResNoObj) || n != 1 {
		t.Fatalf("non-retryable: err %v after %d attempts", err, n)
	}
}
