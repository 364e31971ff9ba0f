// Package native is the framework of gosheep's sheepdog-protocol server
// (port 7000): it accepts connections, frames requests, enforces the
// protocol's limits and hands each request to a Handler. The op handlers
// themselves (VDI ops, object I/O, peer ops) live elsewhere.
//
// # Contract with the Handler
//
// For every well-formed request the server calls Handler.Handle in a
// goroutine of its own, so handlers on one connection run concurrently
// (at most Config.MaxInflight of them) and their responses are written in
// completion order, each carrying the request's id. Sheepdog clients (QEMU,
// dog, our client package) match responses by id.
//
//   - req is the decoded header. It has passed proto's CheckVersion, and
//     its DataLength is at most Config.MaxPayload. Unknown opcodes reach the
//     handler too: answer them with proto.ResInvalidParms (req.Reply).
//   - data is the request payload, present only when req.Flags has
//     proto.FlagWrite (len(data) == req.DataLength). It belongs to the
//     server and stays valid until the response has been written, so a
//     handler may return (part of) it as the response payload, but must not
//     keep it after that.
//   - The returned Response needs only Result and the opcode-specific
//     fields (and Epoch where the op defines one). The server sets ID to
//     req.ID, Opcode to req.Opcode when left zero, and DataLength to
//     len(payload).
//   - The payload must fit the client's buffer, req.ReplyLimit() (for
//     sheepdog ops: req.DataLength). A longer payload is a handler bug: the
//     server logs it and truncates, because a client cannot resynchronise
//     on extra bytes. Extension ops should answer proto.ResBufferSmall
//     instead (see ReplyJSON).
//   - Payload ownership: the server only reads the payload, after Handle
//     returns. Buffers from Alloc(ctx, n) are recycled by the server once
//     the response is written; a handler that hands out memory of its own
//     can register a release function with AfterReply.
//   - ctx is cancelled when the connection breaks or the server closes.
//     A panic in Handle is recovered: the client gets proto.ResSystemError,
//     the panic is logged and counted, and the connection keeps serving.
//
// # Connection rules
//
// Headers are read one after the other; a request whose proto_ver fails
// CheckVersion is answered with ResVerMismatch (its payload is skipped). A
// DataLength above MaxPayload is answered with ResInvalidParms; if it
// announced a payload the connection is then closed, since the stream can no
// longer be framed. Once MaxInflight requests are outstanding the server
// stops reading until one completes (TCP backpressure). TCP keepalive
// detects dead peers; a peer that stops reading responses is cut off after
// Config.WriteTimeout.
package native
