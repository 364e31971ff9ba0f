// Package metrics holds gosheep's Prometheus instrumentation. Components
// report through the small Recorder interface so they can be tested without
// a registry; the daemon wires a Prometheus-backed Recorder.
package metrics

import "time"

// Recorder receives per-request observations from front ends and the gateway.
type Recorder interface {
	// Request records one request: frontend is "iscsi", "nbd", "native" or
	// "peer"; op is the command name; bytes is the payload moved.
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
