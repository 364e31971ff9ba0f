package cluster

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestLibLogLine(t *testing.T) {
	for _, c := range []struct {
		line string
		lvl  slog.Level
		msg  string
	}{
		{"2026/11/25 09:19:38 [DEBUG] serf: messageJoinType: 2bf7", slog.LevelDebug, "serf: messageJoinType: 2bf7"},
		{"2026/11/25 09:19:38 [INFO] serf: EventMemberJoin: a 127.0.0.1", slog.LevelInfo, "serf: EventMemberJoin: a 127.0.0.1"},
		{"2026/11/25 09:19:38 [WARN] serf: Failed to re-join any previously known node", slog.LevelWarn, "serf: Failed to re-join any previously known node"},
		{"2026/11/25 09:19:38 [ERR] memberlist: Failed to send ping", slog.LevelError, "memberlist: Failed to send ping"},
		{"2026-11-25T09:19:36.593Z [WARN]  raft: heartbeat timeout reached", slog.LevelWarn, "raft: heartbeat timeout reached"},
		{"2026-11-25T09:19:36.593Z [ERROR] raft: failed to appendEntries", slog.LevelError, "raft: failed to appendEntries"},
		{"2026/11/25 09:19:38 [WARN] text quoting [DEBUG] later", slog.LevelWarn, "text quoting [DEBUG] later"},
		{"no tag at all", slog.LevelWarn, "no tag at all"},
	} {
		lvl, msg := libLogLine(c.line)
		if lvl != c.lvl || msg != c.msg {
			t.Errorf("%q: %v %q, want %v %q", c.line, lvl, msg, c.lvl, c.msg)
		}
	}
}

// Lines below the logger's level are dropped: serf's debug chatter does not
// reach an info-level log.
func TestLibLogLevels(t *testing.T) {
	var buf bytes.Buffer
	w := newLibLog(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	fmt.Fprint(w, "2026/11/25 09:19:38 [DEBUG] serf: chatter\n2026/11/25 09:19:38 [INFO] serf: joined\n")
	out := buf.String()
	if strings.Contains(out, "chatter") || !strings.Contains(out, "level=INFO msg=\"serf: joined\"") {
		t.Fatalf("log output:\n%s", out)
	}
}

// A library repeating one warning or error (raft retrying a voter that
// is down) logs it once a minute at its level, the repeats in between at
// debug, and says how many it quieted; another peer's failure, or another
// message, is not quieted by it.
func TestLibLogQuietsRepeats(t *testing.T) {
	var buf bytes.Buffer
	w := newLibLog(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	now := time.Unix(1e9, 0)
	w.now = func() time.Time { return now }
	line := func(peer string, backoff int) string {
		return fmt.Sprintf("2026-12-07T00:51:53.621Z [ERROR] raft: failed to heartbeat to: peer=%s:7001 backoff time=%dms error=\"dial tcp %s:7001: connect: connection refused\"\n", peer, backoff, peer)
	}
	count := func(sub string) int { return strings.Count(buf.String(), sub) }
	for i := range 130 {
		fmt.Fprint(w, line("127.0.0.3", 10*(i%50)+10))
		now = now.Add(500 * time.Millisecond)
	}
	// 65 s of repeats: the first at ERROR, the next after a minute.
	if n := count("level=ERROR"); n != 2 {
		t.Fatalf("%d ERROR lines for 130 repeats over 65 s, want 2:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "repeats_quieted=119") {
		t.Fatalf("the line after the window does not say how many were quieted:\n%s", buf.String())
	}
	fmt.Fprint(w, line("127.0.0.4", 10))
	fmt.Fprint(w, "2026-12-07T00:51:53.621Z [WARN]  raft: heartbeat timeout reached, starting election: term=4\n")
	fmt.Fprint(w, "2026-12-07T00:51:53.621Z [WARN]  raft: heartbeat timeout reached, starting election: term=5\n")
	if n := count("peer=127.0.0.4"); n != 1 {
		t.Fatalf("another peer's failure was quieted:\n%s", buf.String())
	}
	if n := count("level=WARN msg=\"raft: heartbeat timeout"); n != 1 {
		t.Fatalf("%d election warnings differing only by term, want 1 (the other quieted)", n)
	}
	// Raft probing a new follower for its log is routine: info, not warn.
	fmt.Fprint(w, "2026-12-07T01:24:39.399Z [WARN]  raft: appendEntries rejected, sending older logs: peer=\"{Voter 4ab4 127.0.0.3:7001}\" next=1\n")
	fmt.Fprint(w, "2026-12-07T01:24:39.404Z [WARN]  raft: failed to get previous log: previous-index=4 last-index=0 error=\"log not found\"\n")
	if n := count("level=INFO msg=\"raft: appendEntries rejected") + count("level=INFO msg=\"raft: failed to get previous log"); n != 2 {
		t.Fatalf("raft's log probing: %d of 2 lines at info:\n%s", n, buf.String())
	}
	// Info and debug lines are never quieted.
	for range 3 {
		fmt.Fprint(w, "2026/11/25 09:19:38 [INFO] serf: EventMemberJoin: a 127.0.0.1\n")
	}
	if n := count("EventMemberJoin"); n != 3 {
		t.Fatalf("%d of 3 info lines", n)
	}
}
