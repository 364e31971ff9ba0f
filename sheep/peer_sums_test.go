package sheep

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"

	"github.com/gosheep/gosheep/client"
	"github.com/gosheep/gosheep/proto"
	"github.com/gosheep/gosheep/store"
)

func TestSplitSums(t *testing.T) {
	data := bytes.Repeat([]byte{0xa5}, 2*store.SumBlock)
	sums := store.BlockSums(nil, data)
	payload := append(append([]byte(nil), data...), appendSums(nil, sums)...)
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

// oldPeer is a native server that answers WRITE_PEER_SUMS the way a node
// from before that opcode does (an unknown opcode: ResInvalidParms) and
// records what it was sent.
type oldPeer struct {
	ln      net.Listener
	mu      sync.Mutex
	ops     []proto.Opcode
	written []byte
	// plainResult is the answer to WRITE_PEER.
	plainResult proto.Result
}

func startOldPeer(t *testing.T, plainResult proto.Result) *oldPeer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &oldPeer{ln: ln, plainResult: plainResult}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *oldPeer) serve(c net.Conn) {
	defer c.Close()
	for {
		req, err := proto.ReadRequest(c)
		if err != nil {
			return
		}
		data := make([]byte, req.DataLength)
		if req.Flags&proto.FlagWrite != 0 {
			if _, err := io.ReadFull(c, data); err != nil {
				return
			}
		}
		res := proto.ResInvalidParms
		p.mu.Lock()
		p.ops = append(p.ops, req.Opcode)
		if req.Opcode == proto.OpWritePeer {
			res = p.plainResult
			if res == proto.ResSuccess {
				p.written = append([]byte(nil), data...)
			}
		}
		p.mu.Unlock()
		rsp := proto.Response{ProtoVer: req.ProtoVer, Opcode: req.Opcode, ID: req.ID, Result: res}
		if _, err := c.Write(rsp.Marshal()); err != nil {
			return
		}
	}
}

func TestRemoteWriteFallsBackForOldPeer(t *testing.T) {
	data := bytes.Repeat([]byte{0x5a}, 2*store.SumBlock)
	sums := store.BlockSums(nil, data)
	k := store.Key{OID: proto.OID(0x0123)}
	for _, tc := range []struct {
		name    string
		plain   proto.Result
		wantErr bool
	}{
		{"old peer takes the data alone", proto.ResSuccess, false},
		{"invalid for any peer stays an error", proto.ResInvalidParms, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startOldPeer(t, tc.plain)
			pool := client.NewPool(1)
			defer pool.Close()
			r := &remotePeer{pool: pool, addr: p.ln.Addr().String()}
			err := r.Write(context.Background(), 1, k, 0, data, sums, false)
			if tc.wantErr != (err != nil) {
				t.Fatalf("Write: %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr && proto.ResultOf(err) != proto.ResInvalidParms {
				t.Fatalf("Write: %v, want ResInvalidParms", err)
			}
			p.mu.Lock()
			defer p.mu.Unlock()
			if want := []proto.Opcode{proto.OpWritePeerSums, proto.OpWritePeer}; !slices.Equal(p.ops, want) {
				t.Fatalf("peer saw %v, want %v", p.ops, want)
			}
			if !tc.wantErr && !bytes.Equal(p.written, data) {
				t.Fatal("the plain write did not carry the data (and nothing else)")
			}
		})
	}
}
