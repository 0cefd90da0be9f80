//go:build race

package store

// raceEnabled: the race detector slows the store ~10x; long tests scale
// down.
const raceEnabled = true
