package client

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

func ping(t *testing.T, c *Conn) {
	t.Helper()
	if _, err := c.ReadObj(testCtx(t), ObjReq{OID: 1}, make([]byte, 8)); err != nil {
		t.Fatal(err)
	}
}

func TestPoolRoundRobinAndRedial(t *testing.T) {
	srv, addr := startNative(t, objHandler)
	p := NewPool(2)
	defer p.Close()
	ctx := testCtx(t)
	if srv.ActiveConns() != 0 {
		t.Fatal("NewPool dialled eagerly")
	}
	var got []*Conn
	for i := 0; i < 4; i++ {
		c, err := p.Get(ctx, addr)
		if err != nil {
			t.Fatal(err)
		}
		ping(t, c)
		got = append(got, c)
	}
	if got[0] == got[1] || got[0] != got[2] || got[1] != got[3] {
		t.Fatal("not round-robin over two connections")
	}
	if srv.ActiveConns() != 2 {
		t.Fatalf("%d server connections", srv.ActiveConns())
	}

	got[0].Close() // a failed connection is replaced on its next turn
	var fresh []*Conn
	for i := 0; i < 2; i++ {
		c, err := p.Get(ctx, addr)
		if err != nil {
			t.Fatal(err)
		}
		ping(t, c)
		fresh = append(fresh, c)
	}
	if fresh[0] == got[0] || fresh[1] == got[0] || (fresh[0] == got[1]) == (fresh[1] == got[1]) {
		t.Fatal("broken connection handed out again, or the healthy one dropped")
	}

	p.Close()
	for _, c := range append(got, fresh...) {
		if c.Err() == nil {
			t.Fatal("Close left a connection open")
		}
	}
	if _, err := p.Get(ctx, addr); !errors.Is(err, ErrPoolClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
}

func TestPoolConcurrentGet(t *testing.T) {
	var mu sync.Mutex
	accepted := 0
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			accepted++
			mu.Unlock()
			defer nc.Close()
		}
	}()
	p := NewPool(3)
	defer p.Close()
	ctx := testCtx(t)
	var wg sync.WaitGroup
	conns := make(chan *Conn, 64)
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.Get(ctx, ln.Addr().String())
			if err != nil {
				t.Error(err)
				return
			}
			conns <- c
		}()
	}
	wg.Wait()
	close(conns)
	distinct := map[*Conn]bool{}
	for c := range conns {
		distinct[c] = true
	}
	if len(distinct) != 3 {
		t.Fatalf("%d distinct connections, want 3", len(distinct))
	}
	p.Close()
	// A dial completes once the kernel has queued the connection, which
	// may be before the accept loop above counts it: wait for the count.
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return accepted
	}
	for deadline := time.Now().Add(5 * time.Second); count() < 3 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // a fourth dial would show by now
	if n := count(); n != 3 {
		t.Fatalf("%d dials, want 3", n)
	}
}

func TestPoolDialFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nobody listens there now
	p := NewPool(1)
	defer p.Close()
	_, err = p.Get(testCtx(t), addr)
	if !errors.Is(err, ErrConnClosed) || proto.ResultOf(err) != proto.ResNetworkError {
		t.Fatalf("%v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Get(ctx, addr); err == nil {
		t.Fatal("Get with a dead context dialled")
	}
}

func TestPoolForget(t *testing.T) {
	_, addr := startNative(t, objHandler)
	p := NewPool(1)
	defer p.Close()
	c, err := p.Get(testCtx(t), addr)
	if err != nil {
		t.Fatal(err)
	}
	p.Forget(addr)
	if c.Err() == nil {
		t.Fatal("Forget left the connection open")
	}
	c2, err := p.Get(testCtx(t), addr)
	if err != nil || c2 == c {
		t.Fatalf("%v", err)
	}
	ping(t, c2)
}
