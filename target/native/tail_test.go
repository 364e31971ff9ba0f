package native

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gosheep/gosheep/proto"
)

// tailHandler answers READ_OBJ with "head" followed by DataLength-4 bytes
// of src from the request's offset; with ID 99 it fails after setting the
// tail, and with ID 98 it asks for more than the client allows.
func tailHandler(src io.ReaderAt, released chan<- struct{}) HandlerFunc {
	return func(ctx context.Context, req *proto.Request, data []byte) (proto.Response, []byte) {
		n := int(req.DataLength) - 4
		if req.ID == 98 {
			n++
		}
		if !ReplyTail(ctx, src, int64(req.Obj().Offset), n) || !AfterReply(ctx, func() { released <- struct{}{} }) {
			return req.Reply(proto.ResSystemError), nil
		}
		if req.ID == 99 {
			return req.Reply(proto.ResEIO), []byte("head")
		}
		return proto.Response{}, []byte("head")
	}
}

// readerOnly hides the file's descriptor, so the tail is copied.
type readerOnly struct{ r io.ReaderAt }

func (r readerOnly) ReadAt(p []byte, off int64) (int, error) { return r.r.ReadAt(p, off) }

func tailFile(t *testing.T, n int) (*os.File, []byte) {
	t.Helper()
	want := make([]byte, n)
	for i := range want {
		want[i] = byte(i * 7)
	}
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, want, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, want
}

func TestReplyTail(t *testing.T) {
	f, want := tailFile(t, 3<<20)
	for _, tc := range []struct {
		name string
		src  io.ReaderAt
	}{
		{"sendfile", f},
		{"copied", readerOnly{f}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			released := make(chan struct{}, 8)
			_, addr := startServer(t, Config{Handler: tailHandler(tc.src, released)})
			r := dialRaw(t, addr)
			read := func(id uint32, off, n int) (proto.Response, []byte) {
				req := proto.Request{ProtoVer: proto.ProtoVer, Opcode: proto.OpReadObj, ID: id, DataLength: uint32(4 + n)}
				req.SetObj(proto.ObjArgs{Offset: uint32(off)})
				r.send(req, nil)
				return r.recv()
			}
			for _, c := range []struct{ off, n int }{{0, 1 << 20}, {12345, 2 << 20}, {0, 0}, {3<<20 - 10, 10}} {
				rsp, b := read(1, c.off, c.n)
				if rsp.Result != proto.ResSuccess || !bytes.HasPrefix(b, []byte("head")) || !bytes.Equal(b[4:], want[c.off:c.off+c.n]) {
					t.Fatalf("%d bytes at %d: %v, %d bytes back", c.n, c.off, rsp.Result, len(b))
				}
				<-released
			}
			if rsp, b := read(99, 0, 4096); rsp.Result != proto.ResEIO || string(b) != "head" {
				t.Fatalf("failed request: %v with %d bytes, want EIO and no tail", rsp.Result, len(b))
			}
			<-released
			if rsp, b := read(98, 0, 4096); rsp.Result != proto.ResSystemError || len(b) != 0 {
				t.Fatalf("tail beyond the client's buffer: %v with %d bytes, want SYSTEM_ERROR and no payload", rsp.Result, len(b))
			}
			<-released
			if rsp, b := read(5, 1, 1); rsp.Result != proto.ResSuccess || string(b) != "head"+string(want[1:2]) {
				t.Fatalf("follow-up request: %v, % x", rsp.Result, b)
			}
			<-released
			// The file ends before the announced bytes: the stream cannot
			// be framed any more, so the server hangs up.
			req := proto.Request{ProtoVer: proto.ProtoVer, Opcode: proto.OpReadObj, ID: 7, DataLength: 4 + 8192}
			req.SetObj(proto.ObjArgs{Offset: 3<<20 - 4096})
			r.send(req, nil)
			if rsp, err := proto.ReadResponse(r.nc); err != nil || rsp.DataLength != 4+8192 {
				t.Fatalf("short tail: header %+v, %v", rsp, err)
			}
			if _, err := io.ReadFull(r.nc, make([]byte, 4+8192)); err == nil {
				t.Fatal("read the whole payload of a tail the file cannot fill")
			}
			<-released
		})
	}
}

// TestTailTimeout: a client that stops reading a response with a tail
// loses its connection after TailTimeout, and the tail's source is
// released then, not after the whole WriteTimeout.
func TestTailTimeout(t *testing.T) {
	f, _ := tailFile(t, 64<<20) // more than the socket buffers hold
	released := make(chan struct{}, 1)
	_, addr := startServer(t, Config{Handler: tailHandler(f, released), TailTimeout: 200 * time.Millisecond, MaxPayload: 65 << 20})
	r := dialRaw(t, addr)
	req := proto.Request{ProtoVer: proto.ProtoVer, Opcode: proto.OpReadObj, ID: 1, DataLength: 4 + 64<<20}
	r.send(req, nil) // and never read the answer
	select {
	case <-released:
	case <-time.After(10 * time.Second):
		t.Fatal("the tail's source is still pinned")
	}
}
