package scsi

import "bytes"

// inRange reports whether the n blocks from lba lie within the capacity.
func (x *exec) inRange(lba, n uint64) bool {
	b := x.lu.blocks()
	return lba <= b && n <= b-lba
}

// dataBlocks returns the whole blocks of data-out available for a command
// that wants want blocks: what the CDB asks for, or fewer when the
// initiator sent less (the transport reports the residual). A trailing
// partial block is an error.
func (x *exec) dataBlocks(want uint64) ([]byte, *Result) {
	d := x.cmd.DataOut
	if uint64(len(d)) >= want*BlockSize {
		return d[:want*BlockSize], nil
	}
	if len(d)%BlockSize != 0 {
		return nil, checkCondition(SenseInvalidFieldInInformationUnit())
	}
	return d, nil
}

// read reads n blocks from lba.
func (x *exec) read(op string, lba, n uint64) ([]byte, *Result) {
	buf := make([]byte, n*BlockSize)
	if err := x.lu.backend.ReadAt(x.ctx, buf, int64(lba*BlockSize)); err != nil {
		return nil, x.backendError(op, err)
	}
	return buf, nil
}

// lockRange takes the range lock of n blocks from lba; the caller must call
// the returned function when done.
func (x *exec) lockRange(lba, n uint64) (func(), *Result) {
	unlock, err := x.lu.locks.lock(x.ctx, lba, n)
	if err != nil {
		return nil, x.backendError("lock", err)
	}
	return unlock, nil
}

// firstDifference returns the offset of the first byte where a and b differ
// (they have equal length), or -1.
func firstDifference(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// runRead implements READ(6), READ(10), READ(12) and READ(16).
func runRead(x *exec) *Result {
	lba, n, lenField := blockRange(x.cdb)
	if n > maxTransferBlocks {
		return checkCondition(SenseInvalidFieldInCDB(lenField))
	}
	if !x.inRange(lba, n) {
		return checkCondition(SenseLBAOutOfRange())
	}
	if n == 0 {
		return good(nil)
	}
	if x.lu.replica.Ordering() {
		// A write in flight may be here and not yet on the peer: wait
		// for it, so that no read returns what a read through the peer
		// could then miss.
		unlock, res := x.lockRange(lba, n)
		if res != nil {
			return res
		}
		defer unlock()
	}
	d, res := x.read("read", lba, n)
	if res != nil {
		return res
	}
	return good(d)
}

// runWrite implements WRITE(6/10/12/16), WRITE AND VERIFY(10/12/16) and
// WRITE ATOMIC(16).
func runWrite(x *exec) *Result {
	op := x.cdb[0]
	lba, n, lenField := blockRange(x.cdb)
	verify := op == opWriteVerify10 || op == opWriteVerify12 || op == opWriteVerify16
	if verify && x.cdb[1]&0x04 != 0 {
		return checkCondition(SenseInvalidBitInCDB(1, 2))
	}
	limit := uint64(maxTransferBlocks)
	if op == opWriteAtomic16 {
		limit = maxAtomicBlocks
	}
	data, nb, unlock, res := x.beginWrite(lba, n, limit, lenField)
	if unlock == nil {
		return res
	}
	defer unlock()
	if err := x.lu.writeAt(x.ctx, data, int64(lba*BlockSize)); err != nil {
		return x.backendError("write", err)
	}
	if !verify {
		return good(nil)
	}
	back, res := x.read("write and verify", lba, nb)
	if res != nil {
		return res
	}
	if x.cdb[1]&0x02 != 0 { // BYTCHK
		if off := firstDifference(data, back); off >= 0 {
			return checkCondition(SenseMiscompare(uint32(off)))
		}
	}
	return good(nil)
}

// orGood returns res, or GOOD when res is nil.
// beginWrite is the common start of the commands that write blocks from
// the data-out: the transfer length within limit, the range on the medium,
// the unit writable, the data present. It returns the whole blocks that
// arrived, how many they are, and the release of the range lock it took;
// a nil unlock means the command is already finished with res.
func (x *exec) beginWrite(lba, n, limit uint64, lenField int) (data []byte, nb uint64, unlock func(), res *Result) {
	if n > limit {
		return nil, 0, nil, checkCondition(SenseInvalidFieldInCDB(lenField))
	}
	if !x.inRange(lba, n) {
		return nil, 0, nil, checkCondition(SenseLBAOutOfRange())
	}
	if n == 0 {
		return nil, 0, nil, good(nil)
	}
	if res := x.writable(); res != nil {
		return nil, 0, nil, res
	}
	data, res = x.dataBlocks(n)
	if res != nil || len(data) == 0 {
		return nil, 0, nil, orGood(res)
	}
	nb = uint64(len(data) / BlockSize)
	unlock, res = x.lockRange(lba, nb)
	if res != nil {
		return nil, 0, nil, res
	}
	return data, nb, unlock, nil
}

func orGood(res *Result) *Result {
	if res != nil {
		return res
	}
	return good(nil)
}

// runVerify implements VERIFY(10), VERIFY(12) and VERIFY(16): BYTCHK 00b
// reads the blocks, 01b compares them with the data-out, 11b compares each
// with one block of data-out.
func runVerify(x *exec) *Result {
	bytchk := (x.cdb[1] >> 1) & 3
	if bytchk == 2 {
		return checkCondition(SenseInvalidBitInCDB(1, 2))
	}
	lba, n, lenField := blockRange(x.cdb)
	if bytchk == 1 && n > maxTransferBlocks {
		return checkCondition(SenseInvalidFieldInCDB(lenField))
	}
	if !x.inRange(lba, n) {
		return checkCondition(SenseLBAOutOfRange())
	}
	if n == 0 {
		return good(nil)
	}
	switch bytchk {
	case 1:
		data, res := x.dataBlocks(n)
		if res != nil || len(data) == 0 {
			return orGood(res)
		}
		got, res := x.read("verify", lba, uint64(len(data)/BlockSize))
		if res != nil {
			return res
		}
		if off := firstDifference(data, got); off >= 0 {
			return checkCondition(SenseMiscompare(uint32(off)))
		}
		return good(nil)
	case 3:
		if len(x.cmd.DataOut) < BlockSize {
			return checkCondition(SenseInvalidFieldInInformationUnit())
		}
		pattern := x.cmd.DataOut[:BlockSize]
		return x.scan(lba, n, func(pos uint64, d []byte) *Result {
			for i := 0; i < len(d); i += BlockSize {
				if off := firstDifference(pattern, d[i:i+BlockSize]); off >= 0 {
					return checkCondition(SenseMiscompare(uint32((pos-lba)*BlockSize) + uint32(i+off)))
				}
			}
			return nil
		})
	}
	return x.scan(lba, n, func(uint64, []byte) *Result { return nil })
}

// scan reads n blocks from lba in pieces of at most maxTransferBlocks and
// hands each to f with its first LBA; a non-nil result from f ends the scan.
func (x *exec) scan(lba, n uint64, f func(pos uint64, d []byte) *Result) *Result {
	for pos := lba; pos < lba+n; {
		k := min(lba+n-pos, maxTransferBlocks)
		d, res := x.read("verify", pos, k)
		if res != nil {
			return res
		}
		if res := f(pos, d); res != nil {
			return res
		}
		pos += k
	}
	return good(nil)
}

// runCompareAndWrite implements COMPARE AND WRITE: under the range lock,
// compare the first half of the data-out with the blocks and, only if they
// match, write the second half.
func runCompareAndWrite(x *exec) *Result {
	lba, n, lenField := blockRange(x.cdb)
	if n > maxCompareAndWriteBlocks {
		return checkCondition(SenseInvalidFieldInCDB(lenField))
	}
	if !x.inRange(lba, n) {
		return checkCondition(SenseLBAOutOfRange())
	}
	if uint64(len(x.cmd.DataOut)) != 2*n*BlockSize {
		return checkCondition(SenseInvalidFieldInCDB(lenField))
	}
	if n == 0 {
		return good(nil)
	}
	if res := x.writable(); res != nil {
		return res
	}
	verify, write := x.cmd.DataOut[:n*BlockSize], x.cmd.DataOut[n*BlockSize:]
	unlock, res := x.lockRange(lba, n)
	if res != nil {
		return res
	}
	defer unlock()
	cur, res := x.read("compare and write", lba, n)
	if res != nil {
		return res
	}
	if off := firstDifference(verify, cur); off >= 0 {
		if !x.lu.outcomes.retriedCAW(x, lba, n, cur) {
			return checkCondition(SenseMiscompare(uint32(off)))
		}
		if forwardedOf(x.ctx) != nil {
			return good(nil) // the first run's outcome (outcome.go)
		}
		// The first run's outcome, for a retry sent here: its write,
		// which the blocks hold, may be on no other array that serves
		// the pod (its mirror unconfirmed), so it is made again.
	}
	err := x.lu.writeAt(x.ctx, write, int64(lba*BlockSize))
	if f := answerOf(x.ctx); f != nil {
		// Remembered even if the write failed: it may have landed (on
		// this copy, or on the peer's), and a retry checks the blocks.
		x.lu.outcomes.rememberCAW(f, lba, n)
	}
	if err != nil {
		return x.backendError("compare and write", err)
	}
	return good(nil)
}

// runOrWrite implements ORWRITE(16): under the range lock, the blocks
// become the bitwise OR of their contents and the data-out.
func runOrWrite(x *exec) *Result {
	lba, n, lenField := blockRange(x.cdb)
	data, nb, unlock, res := x.beginWrite(lba, n, maxTransferBlocks, lenField)
	if unlock == nil {
		return res
	}
	defer unlock()
	cur, res := x.read("orwrite", lba, nb)
	if res != nil {
		return res
	}
	for i := range cur {
		cur[i] |= data[i]
	}
	if err := x.lu.writeAt(x.ctx, cur, int64(lba*BlockSize)); err != nil {
		return x.backendError("orwrite", err)
	}
	return good(nil)
}

// runPrefetch implements PRE-FETCH(10) and PRE-FETCH(16): there is no
// cache to load, so only the range is checked.
func runPrefetch(x *exec) *Result {
	lba, n, _ := blockRange(x.cdb)
	if !x.inRange(lba, n) {
		return checkCondition(SenseLBAOutOfRange())
	}
	return good(nil)
}

// runSyncCache implements SYNCHRONIZE CACHE(10) and (16): every write is
// durable before its status, so only the range is checked.
func runSyncCache(x *exec) *Result {
	lba, n, _ := blockRange(x.cdb)
	if !x.inRange(lba, n) {
		return checkCondition(SenseLBAOutOfRange())
	}
	return good(nil)
}
