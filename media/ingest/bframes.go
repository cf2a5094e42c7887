package ingest

// H.264 slice types (ITU-T H.264 table 7-6); 5 to 9 mean the same as 0 to 4
// for every slice of the picture.
const (
	sliceB  = 1
	sliceB2 = 6
)

// hasBSlice reports whether an access unit holds a B slice: a frame that
// needs a later frame to decode, which browsers' WebRTC decoders cannot
// reorder. Only the first bytes of each non-IDR slice are read; input that
// ends early or is malformed counts as "no B slice".
func hasBSlice(au [][]byte) bool {
	for _, n := range au {
		if len(n) < 2 || n[0]&0x1f != 1 { // coded slice of a non-IDR picture
			continue
		}
		r := bitReader{b: n[1:]}
		if _, ok := r.ue(); !ok { // first_mb_in_slice
			continue
		}
		if st, ok := r.ue(); ok && (st == sliceB || st == sliceB2) {
			return true
		}
	}
	return false
}

// bitReader reads Exp-Golomb codes from the start of a NAL unit's payload,
// skipping emulation prevention bytes (00 00 03).
type bitReader struct {
	b     []byte
	pos   int // byte
	bit   uint
	zeros int // zero bytes just read, for emulation prevention
}

func (r *bitReader) readBit() (uint32, bool) {
	if r.bit == 0 {
		if r.pos >= len(r.b) {
			return 0, false
		}
		if r.zeros >= 2 && r.b[r.pos] == 3 {
			r.pos++
			r.zeros = 0
			if r.pos >= len(r.b) {
				return 0, false
			}
		}
		if r.b[r.pos] == 0 {
			r.zeros++
		} else {
			r.zeros = 0
		}
	}
	v := uint32(r.b[r.pos]>>(7-r.bit)) & 1
	r.bit++
	if r.bit == 8 {
		r.bit = 0
		r.pos++
	}
	return v, true
}

// ue reads one unsigned Exp-Golomb code (at most 32 bits of value).
func (r *bitReader) ue() (uint32, bool) {
	zeros := 0
	for {
		b, ok := r.readBit()
		if !ok {
			return 0, false
		}
		if b == 1 {
			break
		}
		zeros++
		if zeros > 31 {
			return 0, false
		}
	}
	var v uint32
	for range zeros {
		b, ok := r.readBit()
		if !ok {
			return 0, false
		}
		v = v<<1 | b
	}
	return (1<<zeros - 1) + v, true
}
