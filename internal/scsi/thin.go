package scsi

// writeSameChunkBlocks is how many blocks of a WRITE SAME pattern are
// written per backend call.
const writeSameChunkBlocks = 2048

// maxLBAStatusDescriptors bounds the descriptors of one GET LBA STATUS.
const maxLBAStatusDescriptors = 64

// runWriteSame implements WRITE SAME(10) and WRITE SAME(16). With the UNMAP
// bit the range is deallocated (it then reads as zeros), otherwise the
// one-block pattern (zeros with NDOB) is written to every block.
//
// A long WRITE SAME is written in pieces of writeSameChunkBlocks blocks,
// each durable on its own: if space runs out (SPACE ALLOCATION FAILED) or
// the store fails part-way, the blocks before the failing piece hold the
// pattern and the rest their old data. SBC-3 allows this (a command that
// ends in CHECK CONDITION may have changed part of its range); a host
// repeats the command.
func runWriteSame(x *exec) *Result {
	ws16 := x.cdb[0] == opWriteSame16
	flags := x.cdb[1]
	lba, n, lenField := blockRange(x.cdb)
	if flags&0x10 != 0 { // ANCHOR: ANC_SUP is 0
		return checkCondition(SenseInvalidBitInCDB(1, 4))
	}
	if !x.inRange(lba, n) {
		return checkCondition(SenseLBAOutOfRange())
	}
	if n == 0 || n > maxWriteSameBlocks { // WSNZ
		return checkCondition(SenseInvalidFieldInCDB(lenField))
	}
	ndob := ws16 && flags&0x01 != 0
	pattern := make([]byte, BlockSize)
	if !ndob {
		if len(x.cmd.DataOut) != BlockSize {
			return checkCondition(SenseInvalidFieldInCDB(lenField))
		}
		copy(pattern, x.cmd.DataOut)
	}
	if res := x.writable(); res != nil {
		return res
	}
	unlock, res := x.lockRange(lba, n)
	if res != nil {
		return res
	}
	defer unlock()
	if flags&0x08 != 0 { // UNMAP
		if err := x.lu.unmap(x.ctx, int64(lba*BlockSize), int64(n*BlockSize)); err != nil {
			return x.backendError("write same unmap", err)
		}
		return good(nil)
	}
	chunk := make([]byte, min(n, writeSameChunkBlocks)*BlockSize)
	for i := 0; i < len(chunk); i += BlockSize {
		copy(chunk[i:], pattern)
	}
	for pos := lba; pos < lba+n; {
		k := min(lba+n-pos, writeSameChunkBlocks)
		if err := x.lu.writeAt(x.ctx, chunk[:k*BlockSize], int64(pos*BlockSize)); err != nil {
			return x.backendError("write same", err)
		}
		pos += k
	}
	return good(nil)
}

// runUnmap implements UNMAP: every descriptor is checked before any range
// is deallocated.
func runUnmap(x *exec) *Result {
	if x.cdb[1]&0x01 != 0 { // ANCHOR
		return checkCondition(SenseInvalidBitInCDB(1, 0))
	}
	plen := int(be16(x.cdb[7:9]))
	if plen == 0 {
		return good(nil)
	}
	p := x.cmd.DataOut
	if plen < 8 || len(p) < 8 {
		return checkCondition(SenseParameterListLengthError())
	}
	p = p[:min(plen, len(p))]
	bdl := min(int(be16(p[2:4])), len(p)-8)
	count := bdl / 16
	if count > maxUnmapDescriptors {
		return checkCondition(SenseInvalidFieldInParameterList(2))
	}
	type extent struct{ lba, n uint64 }
	extents := make([]extent, 0, count)
	var total uint64
	for i := range count {
		d := p[8+16*i:]
		e := extent{lba: be64(d[0:8]), n: uint64(be32(d[8:12]))}
		if !x.inRange(e.lba, e.n) {
			return checkCondition(SenseLBAOutOfRange())
		}
		total += e.n
		if e.n > 0 {
			extents = append(extents, e)
		}
	}
	if total > maxUnmapBlocks {
		return checkCondition(SenseInvalidFieldInParameterList(8))
	}
	if res := x.writable(); res != nil {
		return res
	}
	for _, e := range extents {
		unlock, res := x.lockRange(e.lba, e.n)
		if res != nil {
			return res
		}
		err := x.lu.unmap(x.ctx, int64(e.lba*BlockSize), int64(e.n*BlockSize))
		unlock()
		if err != nil {
			return x.backendError("unmap", err)
		}
	}
	return good(nil)
}

// runGetLBAStatus implements GET LBA STATUS: descriptors of mapped and
// deallocated extents from the starting LBA, through Backend.Mapped.
func runGetLBAStatus(x *exec) *Result {
	start := be64(x.cdb[2:10])
	alloc := be32(x.cdb[10:14])
	blocks := x.lu.blocks()
	if start >= blocks {
		return checkCondition(SenseLBAOutOfRange())
	}
	want := maxLBAStatusDescriptors
	if alloc >= 24 {
		want = min(want, int((alloc-8)/16))
	} else {
		want = 1
	}
	type desc struct {
		lba, n uint64
		mapped bool
	}
	var descs []desc
	for pos := start; pos < blocks && len(descs) < want; {
		mapped, run, err := x.lu.backend.Mapped(x.ctx, int64(pos*BlockSize), int64((blocks-pos)*BlockSize))
		if err != nil {
			return x.backendError("get lba status", err)
		}
		k := max(uint64(run)/BlockSize, 1)
		k = min(k, blocks-pos, 0xffffffff)
		if l := len(descs) - 1; l >= 0 && descs[l].mapped == mapped && descs[l].n+k <= 0xffffffff {
			descs[l].n += k
		} else {
			descs = append(descs, desc{lba: pos, n: k, mapped: mapped})
		}
		pos += k
	}
	d := make([]byte, 8+16*len(descs))
	put32(d[0:4], uint32(len(d)-4))
	for i, e := range descs {
		o := d[8+16*i:]
		put64(o[0:8], e.lba)
		put32(o[8:12], uint32(e.n))
		if !e.mapped {
			o[12] = 0x01 // deallocated
		}
	}
	return good(truncate(d, alloc))
}
