package cluster

import (
	"context"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"
)

// libLog adapts the text output of raft (hclog), serf and memberlist (the
// standard log package) to slog, at the level each line names: their
// "[DEBUG]" chatter must not show up as warnings.
//
// It also quiets repeats: a warning or error whose text, numbers aside,
// was logged less than repeatWindow ago goes to debug, and the next one
// after the window carries how many were quieted. Raft retries a voter
// that is down about twice a second, each failure an ERROR line: a node
// away for maintenance filled the others' logs with 7,000 lines an hour.
type libLog struct {
	l   *slog.Logger
	now func() time.Time

	mu   sync.Mutex
	seen map[string]*repeat
}

type repeat struct {
	last    time.Time // last logged at its own level
	quieted int       // repeats since, logged at debug
}

const (
	repeatWindow  = time.Minute
	maxRepeatKeys = 256 // the map is cleared beyond this
)

func newLibLog(l *slog.Logger) *libLog {
	return &libLog{l: l, now: time.Now, seen: map[string]*repeat{}}
}

func (w *libLog) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			lvl, msg := libLogLine(line)
			if lvl == slog.LevelWarn && routine(msg) {
				lvl = slog.LevelInfo
			}
			w.log(lvl, msg)
		}
	}
	return len(p), nil
}

// routine reports raft warnings that are part of normal operation: a
// follower that joined or fell behind is probed backwards for the log it
// lacks (leader: "appendEntries rejected, sending older logs"; follower:
// "failed to get previous log"). Every node start showed them as
// warnings.
func routine(msg string) bool {
	return strings.HasPrefix(msg, "raft: appendEntries rejected, sending older logs") ||
		strings.HasPrefix(msg, "raft: failed to get previous log")
}

func (w *libLog) log(lvl slog.Level, msg string) {
	if lvl < slog.LevelWarn {
		w.l.Log(context.Background(), lvl, msg)
		return
	}
	key := repeatKey(msg)
	now := w.now()
	w.mu.Lock()
	r := w.seen[key]
	if r == nil {
		if len(w.seen) >= maxRepeatKeys {
			clear(w.seen)
		}
		r = &repeat{}
		w.seen[key] = r
	}
	quiet := !r.last.IsZero() && now.Sub(r.last) < repeatWindow
	quieted := r.quieted
	if quiet {
		r.quieted++
	} else {
		r.last, r.quieted = now, 0
	}
	w.mu.Unlock()
	switch {
	case quiet:
		w.l.Log(context.Background(), slog.LevelDebug, msg, "repeat", true)
	case quieted > 0:
		w.l.Log(context.Background(), lvl, msg, "repeats_quieted", quieted)
	default:
		w.l.Log(context.Background(), lvl, msg)
	}
}

// numbers matches what changes between repeats of one message: durations
// (backoff time=500ms, time=501.3ms) and numeric fields (term=3).
// Addresses are kept: failures to reach two peers are two messages.
var numbers = regexp.MustCompile(`\d+(\.\d+)?(ns|µs|us|ms|s|m|h)\b|=\d+(\s|$)`)

func repeatKey(msg string) string { return numbers.ReplaceAllString(msg, "#") }

// libLogLine finds a library log line's level tag ("[WARN] ", "[DEBUG] ",
// hclog's padded "[WARN]  ") and returns the level and the text after it,
// without the timestamp before it. A line without a tag is a warning, as
// everything was before.
func libLogLine(line string) (lvl slog.Level, msg string) {
	at, lvl, msg := -1, slog.LevelWarn, line
	for _, t := range []struct {
		tag string
		lvl slog.Level
	}{
		{"[TRACE]", slog.LevelDebug - 4}, {"[DEBUG]", slog.LevelDebug}, {"[INFO]", slog.LevelInfo},
		{"[WARN]", slog.LevelWarn}, {"[ERR]", slog.LevelError}, {"[ERROR]", slog.LevelError},
	} {
		if i := strings.Index(line, t.tag); i >= 0 && (at < 0 || i < at) {
			at, lvl, msg = i, t.lvl, strings.TrimSpace(line[i+len(t.tag):])
		}
	}
	return lvl, msg
}
