package erasure_test

import (
	"bytes"
	"fmt"

	"github.com/gosheep/gosheep/erasure"
)

// A gateway write of 1 KiB at offset 4096 of a 4:2 object touches bytes
// [1024, 1280) of each of the 6 strip objects; a read of that range fetches
// the same bytes of any 4 strips.
func ExampleCodec_EncodeRange() {
	var codecs erasure.Codecs // the daemon keeps one
	c, err := codecs.Get(4, 2)
	if err != nil {
		panic(err)
	}
	off, data := 4096, bytes.Repeat([]byte("sheep"), 1024/5+1)[:1024]
	chunks, err := c.EncodeRange(data)
	if err != nil {
		panic(err)
	}
	fmt.Printf("%d chunks of %d bytes at strip offset %d\n", len(chunks), len(chunks[0]), off/c.Data())

	chunks[0], chunks[3] = nil, nil // two strips unreadable
	back, err := c.DecodeRange(chunks, len(data))
	fmt.Println(bytes.Equal(back, data), err)
	// Output:
	// 6 chunks of 256 bytes at strip offset 1024
	// true <nil>
}
