package erasure

// deinterleave copies stripes of src into the x = len(dst) data strips:
// stripe k's bytes [j·chunk, (j+1)·chunk) go to dst[j][k·chunk:]. Each
// dst[j] is len(src)/x bytes; len(src) is a multiple of StripeSize.
//
// The copies are small (32..256 bytes), so a copy() call per chunk would
// cost more in call overhead than in moving bytes; fixed-size array copies
// compile to straight-line vector moves.
func deinterleave(dst [][]byte, src []byte, chunk int) {
	stripes := len(src) / StripeSize
	switch chunk {
	case 256:
		d0, d1 := dst[0][:stripes*256], dst[1][:stripes*256]
		for k := range stripes {
			s := src[k*StripeSize : (k+1)*StripeSize]
			*(*[256]byte)(d0[k*256:]) = *(*[256]byte)(s)
			*(*[256]byte)(d1[k*256:]) = *(*[256]byte)(s[256:])
		}
	case 128:
		for j, d := range dst[:4] {
			d = d[:stripes*128]
			for k := range stripes {
				*(*[128]byte)(d[k*128:]) = *(*[128]byte)(src[k*StripeSize+j*128:])
			}
		}
	case 64:
		for j, d := range dst[:8] {
			d = d[:stripes*64]
			for k := range stripes {
				*(*[64]byte)(d[k*64:]) = *(*[64]byte)(src[k*StripeSize+j*64:])
			}
		}
	case 32:
		for j, d := range dst[:16] {
			d = d[:stripes*32]
			for k := range stripes {
				*(*[32]byte)(d[k*32:]) = *(*[32]byte)(src[k*StripeSize+j*32:])
			}
		}
	default:
		deinterleaveGeneric(dst, src, chunk)
	}
}

// deinterleaveGeneric is the plain version, kept to benchmark against.
func deinterleaveGeneric(dst [][]byte, src []byte, chunk int) {
	for k := range len(src) / StripeSize {
		for j := range dst {
			copy(dst[j][k*chunk:(k+1)*chunk], src[k*StripeSize+j*chunk:])
		}
	}
}

// interleave is the inverse of deinterleave: it gathers the x = len(src)
// data strips back into len(dst) bytes of object data.
func interleave(dst []byte, src [][]byte, chunk int) {
	stripes := len(dst) / StripeSize
	switch chunk {
	case 256:
		s0, s1 := src[0][:stripes*256], src[1][:stripes*256]
		for k := range stripes {
			d := dst[k*StripeSize : (k+1)*StripeSize]
			*(*[256]byte)(d) = *(*[256]byte)(s0[k*256:])
			*(*[256]byte)(d[256:]) = *(*[256]byte)(s1[k*256:])
		}
	case 128:
		for j, s := range src[:4] {
			s = s[:stripes*128]
			for k := range stripes {
				*(*[128]byte)(dst[k*StripeSize+j*128:]) = *(*[128]byte)(s[k*128:])
			}
		}
	case 64:
		for j, s := range src[:8] {
			s = s[:stripes*64]
			for k := range stripes {
				*(*[64]byte)(dst[k*StripeSize+j*64:]) = *(*[64]byte)(s[k*64:])
			}
		}
	case 32:
		for j, s := range src[:16] {
			s = s[:stripes*32]
			for k := range stripes {
				*(*[32]byte)(dst[k*StripeSize+j*32:]) = *(*[32]byte)(s[k*32:])
			}
		}
	default:
		interleaveGeneric(dst, src, chunk)
	}
}

// interleaveGeneric is the plain version, kept to benchmark against.
func interleaveGeneric(dst []byte, src [][]byte, chunk int) {
	for k := range len(dst) / StripeSize {
		for j := range src {
			copy(dst[k*StripeSize+j*chunk:k*StripeSize+(j+1)*chunk], src[j][k*chunk:])
		}
	}
}
