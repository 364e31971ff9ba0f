package client

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/target/native"
)

// startNative runs an in-process native server with handler h.
func startNative(t testing.TB, h native.HandlerFunc) (*native.Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := native.NewServer(native.Config{Handler: h})
	go s.Serve(context.Background(), ln)
	t.Cleanup(func() { s.Close() })
	return s, ln.Addr().String()
}

// startRaw runs a misbehaving peer: fn gets each accepted connection.
func startRaw(t testing.TB, fn func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				nc.SetDeadline(time.Now().Add(20 * time.Second))
				fn(nc)
			}()
		}
	}()
	return ln.Addr().String()
}

func dial(t testing.TB, addr string, opts ...Option) *Conn {
	t.Helper()
	c, err := Dial(context.Background(), addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// testCtx bounds a test's calls so a hang fails instead of stalling the run.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func isNetErr(err error) bool {
	return errors.Is(err, ErrConnClosed) && errors.Is(err, proto.ResNetworkError) && proto.ResultOf(err) == proto.ResNetworkError
}
