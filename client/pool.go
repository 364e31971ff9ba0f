package client

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

// ErrPoolClosed is returned by Pool.Get after Close.
var ErrPoolClosed = errors.New("client: pool closed")

// DefaultPoolSize is the number of connections a Pool keeps per peer: a
// few, so one slow large transfer does not queue every request behind it.
const DefaultPoolSize = 2

// Pool keeps up to Size connections per peer address, dialled on first use,
// handed out round-robin and redialled after they break. It is safe for
// concurrent use.
type Pool struct {
	size int
	opts []Option

	mu     sync.Mutex
	closed bool
	peers  map[string]*peer
}

type peer struct {
	next  atomic.Uint32
	slots []slot
}

type slot struct {
	conn atomic.Pointer[Conn]
	dial chan struct{} // one dialler per slot; waiting honours ctx
}

// NewPool returns a pool keeping size connections per peer (DefaultPoolSize
// when size <= 0), each dialled with opts.
func NewPool(size int, opts ...Option) *Pool {
	if size <= 0 {
		size = DefaultPoolSize
	}
	return &Pool{size: size, opts: opts, peers: make(map[string]*peer)}
}

// Get returns a working connection to addr.
func (p *Pool) Get(ctx context.Context, addr string) (*Conn, error) {
	pr, err := p.peer(addr)
	if err != nil {
		return nil, err
	}
	s := &pr.slots[pr.next.Add(1)%uint32(len(pr.slots))]
	if c := s.conn.Load(); c != nil && c.Err() == nil {
		return c, nil
	}
	select {
	case s.dial <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-s.dial }()
	if c := s.conn.Load(); c != nil && c.Err() == nil {
		return c, nil // another caller redialled meanwhile
	}
	c, err := Dial(ctx, addr, p.opts...)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	closed, forgotten := p.closed, p.peers[addr] != pr
	if !closed && !forgotten {
		s.conn.Store(c)
	}
	p.mu.Unlock()
	switch {
	case closed:
		c.Close()
		return nil, ErrPoolClosed
	case forgotten: // Forget raced with us: don't leak c in a dropped slot
		c.Close()
		return p.Get(ctx, addr)
	}
	return c, nil
}

func (p *Pool) peer(addr string) (*peer, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrPoolClosed
	}
	pr := p.peers[addr]
	if pr == nil {
		pr = &peer{slots: make([]slot, p.size)}
		for i := range pr.slots {
			pr.slots[i].dial = make(chan struct{}, 1)
		}
		p.peers[addr] = pr
	}
	return pr, nil
}

// Forget closes and drops the connections to addr (a peer that left).
func (p *Pool) Forget(addr string) {
	p.mu.Lock()
	pr := p.peers[addr]
	delete(p.peers, addr)
	p.mu.Unlock()
	if pr != nil {
		closeSlots(pr)
	}
}

// Close closes every connection; Get fails with ErrPoolClosed afterwards.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	peers := p.peers
	p.peers = nil
	p.mu.Unlock()
	for _, pr := range peers {
		closeSlots(pr)
	}
	return nil
}

func closeSlots(pr *peer) {
	for i := range pr.slots {
		if c := pr.slots[i].conn.Swap(nil); c != nil {
			c.Close()
		}
	}
}
