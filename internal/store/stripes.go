package store

import "math/bits"

// numStripes is the number of chunk lock stripes. Consecutive chunks of a
// volume map to consecutive stripes, so a write of up to numStripes chunks
// never takes a stripe twice; 4096 stripes keep random 4 KiB writers from
// colliding while costing 32 KiB.
const numStripes = 4096

// stripeSet is a set of stripe indexes; iterating its bits yields them in
// ascending order, the order they are locked in (no deadlock between
// batches).
type stripeSet [numStripes / 64]uint64

// stripeOf maps a chunk to its stripe. The volume id is spread by a
// multiplicative hash so that chunk 0 of every volume does not share one
// stripe.
func stripeOf(vol, chunk uint64) uint64 {
	return (chunk + vol*0x9e3779b97f4a7c15) % numStripes
}

// addRange adds the stripes of chunks c0..c1 of vol.
func (ss *stripeSet) addRange(vol, c0, c1 uint64) {
	if c1-c0 >= numStripes-1 {
		ss.fill()
		return
	}
	for c := c0; ; c++ {
		i := stripeOf(vol, c)
		ss[i/64] |= 1 << (i % 64)
		if c == c1 {
			return
		}
	}
}

func (ss *stripeSet) fill() {
	for i := range ss {
		ss[i] = ^uint64(0)
	}
}

func (s *Store) lockStripes(ss *stripeSet) {
	for w, word := range ss {
		for word != 0 {
			s.stripes[w*64+bits.TrailingZeros64(word)].Lock()
			word &= word - 1
		}
	}
}

func (s *Store) unlockStripes(ss *stripeSet) {
	for w, word := range ss {
		for word != 0 {
			s.stripes[w*64+bits.TrailingZeros64(word)].Unlock()
			word &= word - 1
		}
	}
}
