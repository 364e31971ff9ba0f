package native

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/gosheep/gosheep/proto"
)

// ReplyJSON answers an extension-opcode request (proto.OpMeta and friends)
// with v encoded as JSON, or with proto.ResBufferSmall when the encoding
// exceeds the client's buffer (req.ReplyLimit, capped by the server's
// MaxPayload when ctx is a request context), so the client retries with a
// larger buffer instead of receiving a truncated document.
func ReplyJSON(ctx context.Context, req *proto.Request, v any) (proto.Response, []byte) {
	b, err := json.Marshal(v)
	if err != nil {
		return req.Reply(proto.ResSystemError), nil
	}
	limit := req.ReplyLimit()
	if t, ok := ctx.Value(taskKey{}).(*task); ok {
		limit = min(limit, t.srv.maxPayload)
	}
	if uint64(len(b)) > uint64(limit) {
		return req.Reply(proto.ResBufferSmall), nil
	}
	return req.Reply(proto.ResSuccess), b
}

// DecodeJSON decodes the JSON payload of an extension-opcode request into
// v; malformed input maps to proto.ResInvalidParms.
func DecodeJSON(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("native: malformed JSON request: %v: %w", err, proto.ResInvalidParms)
	}
	return nil
}
