// Package metrics holds gosheep's Prometheus instrumentation. Components
// report through the small Recorder interface so they can be tested without
// a registry; the daemon wires the Prometheus-backed *Metrics (New), whose
// Sources are read at scrape time, and serves Handler on --metrics-listen.
//
// Label values come from fixed tables, never from the wire: front ends are
// native, iscsi, nbd and peer; ops are the classes read, write, flush,
// discard, write_zeroes, compare_and_write, create_and_write, remove,
// ec_write, prefetch, lookup, vdi, cluster and control (every command name
// the front ends report maps to one of them); anything unknown is "other".
package metrics

import "time"

// Recorder receives per-request observations from front ends and the gateway.
type Recorder interface {
	// Request records one request: frontend is "iscsi", "nbd", "native" or
	// "peer"; op is the command name; bytes is the payload moved; err is nil
	// on success.
	Request(frontend, op string, bytes int, d time.Duration, err error)
	// Sessions adjusts the number of open sessions/connections of a front end.
	Sessions(frontend string, delta int)
}

// Nop is a Recorder that discards everything.
type Nop struct{}

// Request implements Recorder.
func (Nop) Request(string, string, int, time.Duration, error) {}

// Sessions implements Recorder.
func (Nop) Sessions(string, int) {}
