//go:build race

package placement

// raceEnabled shrinks the big property sweeps: the race detector finds
// nothing in single-goroutine arithmetic and makes it ten times slower.
const raceEnabled = true
