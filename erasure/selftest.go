package erasure

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/klauspost/reedsolomon"
)

// selfTestStripes is the size of the self-test object in stripes: odd, so
// that 16-way strips (32 bytes per stripe) end in a partial 64-byte SIMD
// block and the library's tail code runs too.
const selfTestStripes = 35

// selfTestData is the fixed self-test object: a xorshift64 stream, spelled
// out here so that it never depends on a library's random generator.
func selfTestData() []byte {
	b := make([]byte, selfTestStripes*StripeSize)
	x := uint64(0x9e3779b97f4a7c15)
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x >> 32)
	}
	return b
}

// goldenDigest is the SHA-256 of the concatenated x+y strips of
// selfTestData for one shape, recorded once and checked on every start.
type goldenDigest struct {
	data, parity int
	sha256       string
}

// SelfTest encodes a fixed object with every supported shape and compares
// the strips' SHA-256 with the digests recorded when gosheep was written,
// then decodes it back from the last x strips. A mismatch means this build
// or CPU computes different parity (a library change, a miscompiled or
// faulty SIMD path) and strips written now would not decode elsewhere: the
// daemon must refuse to start. Like MinIO's erasure self-test.
func SelfTest() error { return selfTest(goldenDigests()) }

// selfTest is SelfTest with the golden table and library options as
// parameters, so tests can inject a wrong digest or force portable code.
func selfTest(golden []goldenDigest, opts ...reedsolomon.Option) error {
	data := selfTestData()
	for _, g := range golden {
		c, err := newCodec(g.data, g.parity, opts...)
		if err != nil {
			return fmt.Errorf("erasure: self-test %d:%d: %v: %w", g.data, g.parity, err, ErrSelfTest)
		}
		strips, err := c.EncodeObject(data)
		if err != nil {
			return fmt.Errorf("erasure: self-test %v: encode: %v: %w", c, err, ErrSelfTest)
		}
		if got := stripsDigest(strips); got != g.sha256 {
			return fmt.Errorf("erasure: self-test %v: strips digest %s, want %s: %w", c, got, g.sha256, ErrSelfTest)
		}
		// Decode from the last x strips only: the first y (all data if
		// y >= x would allow it) are lost, so the inverse matrix is used.
		for i := range c.parity {
			strips[i] = nil
		}
		back, err := c.DecodeObject(strips, len(data))
		if err != nil || !bytes.Equal(back, data) {
			return fmt.Errorf("erasure: self-test %v: decode without %d strips failed (%v): %w", c, c.parity, err, ErrSelfTest)
		}
	}
	return nil
}

func stripsDigest(strips [][]byte) string {
	h := sha256.New()
	for _, s := range strips {
		h.Write(s)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// goldenDigests returns the recorded digests for all 60 shapes. Generated
// by TestGoldenDigests with GOSHEEP_ERASURE_GOLDEN=print (klauspost/reedsolomon
// v1.14.2); identical with its SIMD paths, -tags noasm and -tags nopshufb.
func goldenDigests() []goldenDigest {
	return []goldenDigest{
		{2, 1, "ecbef7a2589a2b590b8e717c8c794d1961de7a60f69c1668fed45958f1c06e8a"},
		{2, 2, "82fe124eb43525c01a22e18725c379b50cceff00e042211bc1a2eaa42a743ab9"},
		{2, 3, "40e96ff79f8b129fc2d17d4e1691a316d354d7711b0cc8188d73d37f099a444b"},
		{2, 4, "0651ba74170a55a118161e0b4c49a96aad9b20b6b25fdb9db2b76d34ada656bb"},
		{2, 5, "07790843b9e7af2b1659c61f47383ed848512e51b6547010ddde341dfdd51ba1"},
		{2, 6, "321fd8ec8ee4afc4ee705dbc82fb94a04b0a2045f8413d00b1df27c6022aeb2d"},
		{2, 7, "d9bcf3f2ad99ece1f5efb6136a7dc91a53ff618dc0f87ae47a7dd5c64fd0406d"},
		{2, 8, "1e1f0677eecf8208f92ddd7f0191622adb9592cf2c3cbbc8199f4bb576007447"},
		{2, 9, "cb394de87dee9a7831d1e26fbdc18e26c41ffc66f7612d450a47852353c8299f"},
		{2, 10, "17312f03ba34a3bc9e7fe18189d369c3e5e117c43270ffcf2b91a8299d99393c"},
		{2, 11, "f2556acf52642f92b7b877c1bb5f54123e86d5c6790539a9a78c111237885c64"},
		{2, 12, "9019a9d709ab3838003b9f7d53f47f66eb0c8c967380dda8c61d1dc44a9211bf"},
		{2, 13, "54c8a9296c28317d456d02bc32a422f507facfc080d07960db23eb880bc85757"},
		{2, 14, "59ba8a355a90a476986325c8cfb7e73db192de2e912606e518215c9b0b0719a6"},
		{2, 15, "97442c9cf58b28d27f4230e0411d8590594402d0092e15933530546b389ad176"},
		{4, 1, "8bdde0754a3ffc1be11f7d8bdb210b963677bdc2f27149311329c3eae2bd9080"},
		{4, 2, "9f01427d9cb7207ae93da570d87ca54e8bb62a3f9e5d9d0294e82020adfcbdbc"},
		{4, 3, "b91c16b2e5a809fce2563e04dc8e56a57c76ed492a8655525705b29f61a75a3b"},
		{4, 4, "f2b555efe1cfb56e2880ef698f4b9e5e515e35ceccce47cd09b33803e98e0f49"},
		{4, 5, "0413e3e1988ee9ad5711ce6306e7359cd69e86fd0961c6fabe7da36c57acc29b"},
		{4, 6, "66cfb9982b9acc1147997d7a3de30b42a0d75439e06851fcaf6f9af95c029890"},
		{4, 7, "7162b6ef8f09f0840ea1d9e48f73a4cdea43caedcd5aa3d0119776856a7e8222"},
		{4, 8, "6b3375e0cb69d17d578c879e123a784531800e4d9d0b26d646f8adae6896b167"},
		{4, 9, "7d730c343b51b737bf3a012ba49fd9ee6279ebc2199933962d6050721ff2ac7d"},
		{4, 10, "93797f1cedc39e04c1d63ab5437b5b5e00737e14b3feadc8a20df23a99f09815"},
		{4, 11, "69569f54fd5a7d348e396676c71589c61880e6726e6440d08257a196ddf91995"},
		{4, 12, "0e9fb301b9e29913150fab28992e207330cf5fd6c66ace32b918e36a942b2b7e"},
		{4, 13, "9d7f6f8c0e718ec188b08b49dcbff16a635baefaa802499614f3803f5980544c"},
		{4, 14, "dc4945168f427d309bbeba9a80c7fdc741c136f3c45ae3014475f83b06847cc6"},
		{4, 15, "77c28dcdb46019a8abe9617cc7be87c83d3e102714f508f4dadd40c0eb6e3388"},
		{8, 1, "54658ba348abe64f6dc4677702e60dba7ceea0001a0466c5e772731426f810e2"},
		{8, 2, "0796f2598a3e8bbb78379993bceac925d69a1cb88d83d09368f81863e45f2ed6"},
		{8, 3, "e1b430657f371adcdb2765fd511ddda4b1a0c0ab935443625bbdde6bf1bc1b2b"},
		{8, 4, "6f41e04c9f1342bf161ecdf8b75617fc32bd6ca747486fd2ae8a3e3991dd3c47"},
		{8, 5, "761ebac8c2c00c68dfc8cddb1bb06d0b853efebbb9c42c4afcca4c954317edf2"},
		{8, 6, "6d2034e1317a5f880d1b2c4bec7271ca3b95aef1f5d6aa26b6dc3253adda0309"},
		{8, 7, "873e0614cd7a80e63b02587b6151d873d13cbf0f1a7bf90395caf24013115619"},
		{8, 8, "4842670650b5d9945024dac968acfe6569f4a8fbaed82fa2486ef6fb142e0376"},
		{8, 9, "7a97ac49fcad53c026400631c288d598a07bd8075681949e0bfbdaf9cf2948f1"},
		{8, 10, "d92cbb09aa00f1f792e0029360d27fb71f178521a7070af864ada636b32f9046"},
		{8, 11, "e02fcc989ef391e4137dc4ce42420e7c4684285830314172f10c4ae7e503ce6c"},
		{8, 12, "60f0dbb3c4af83b6995ce4f8ae703a474746b9aab19aec452fc4e46fcb196336"},
		{8, 13, "452e62ae4dcaf6cc6ae4a17362f0ea4298c2c6ac89f4dbec80c84af41b8a2d10"},
		{8, 14, "a3263e5343417b5fa73a042904a85cf508245e919ee4e2c4dc741be79aac5ed8"},
		{8, 15, "b1baab654b00261de3f48a696f6951b4323a037d1c9dd7b0b3c27dbb980f5aad"},
		{16, 1, "0d3fc902bda0d534854a7ad4398bdfef5221d9f5708172d32f7f82bfe81b4279"},
		{16, 2, "ce2e167f3c0a015edc903923fc8989dc66b74b8ddc71d17ce4b1fd562055a2f7"},
		{16, 3, "39e2739a7f8f80aac3caa3616c3a91efb0b61846677d822821ae9a6dd35651d4"},
		{16, 4, "1a22e2c45f0be35a993bf9c912225e372711d02a3ab49c343aad300dbff7a5d6"},
		{16, 5, "cd4d72af8f490c8c39c0bda75387d68137fa005a0061cd53d66b681ef547243f"},
		{16, 6, "d992aa11b83af7fa2b9689154de9451d7eb7e1366060a5ba2d5527bfe08791b3"},
		{16, 7, "2f3187408449f635156bda6bc09c34c7aaaa1e41b80b1284e89222d2cca99597"},
		{16, 8, "cc6aa3e32033ba85e79e3cf87645eca751c7c0f11cdce4ae3a0ac231513dd05f"},
		{16, 9, "011cad718455230a43b7daf6ee90c23776b66adbf8dfa4c9c0499cb9427c3a58"},
		{16, 10, "c4362aa17e8600d3f9992b3c96d2164257bc260e42a62c0da3cf97882fa63e91"},
		{16, 11, "3732168808a9b9ff6497a5add82be8477c5de69b8025919a9a3fb8f00d44eb27"},
		{16, 12, "24f466d872ad2021b33e22ce8666b9d916b3a5acf31a999a661fa8c898a17f8a"},
		{16, 13, "567ad85d395ac53871108c3caaf4053a943d0982c0a320e53dda54bab2a87ccf"},
		{16, 14, "1989027f366bdbe3e4ed6c6b899add89ad8f4c7ea448f2a5ff463ee2c19592d6"},
		{16, 15, "c17d92829adb53a8c49a2c369a1a5f5b3c4f3cced44a7b277d543ec9923b45e7"},
	}
}
