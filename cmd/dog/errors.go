package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/gosheep/gosheep/client"
	"github.com/gosheep/gosheep/cmd/dog/internal/backup"
	"github.com/gosheep/gosheep/cmd/dog/internal/parse"
	"github.com/gosheep/gosheep/proto"
)

// Exit codes: sheepdog's (include/exits.h), which scripts test for.
const (
	exitSuccess = 0  // the command did what was asked
	exitFailure = 1  // it failed
	exitSysFail = 2  // the cluster or the connection to it is in trouble
	exitExists  = 3  // the object to create already exists
	exitFull    = 4  // the cluster has no space (or no free VDI id) left
	exitMissing = 5  // the VDI, snapshot or attribute does not exist
	exitUsage   = 64 // bad command line
)

// usageError is a bad command line (exit 64).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usageErrorf(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// exitError is a finished message with its exit code.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// errCanceled is the user answering "no": sheepdog exits successfully.
var errCanceled = errors.New("canceled")

// opError is a failed step: what dog tried, and why it failed.
type opError struct {
	what string
	err  error
}

func (e *opError) Error() string { return e.what + ": " + e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

// failf wraps err with what dog was doing ("Failed to create VDI vol").
func failf(err error, format string, a ...any) error {
	if err == nil {
		return nil
	}
	return &opError{what: fmt.Sprintf(format, a...), err: err}
}

// serverError is a failed extension operation: the sheep's result code
// and its explanation.
type serverError struct {
	code proto.Result
	msg  string
}

func (e *serverError) Error() string { return e.msg }
func (e *serverError) Unwrap() error { return e.code }

// connError is a failure to reach a sheep.
type connError struct {
	addr string
	err  error
}

func (e *connError) Error() string {
	return "cannot connect to sheep at " + e.addr + ": " + e.err.Error()
}
func (e *connError) Unwrap() error { return e.err }

// unsupported is an operation this sheep does not implement.
type unsupported struct{ what string }

func (e unsupported) Error() string {
	return e.what + ": not supported by this server (is it an older gosheep, or sheepdog?)"
}

// exitCode maps a result code to sheepdog's exit status.
func exitCode(r proto.Result) int {
	switch r {
	case proto.ResNoVDI, proto.ResNoTag, proto.ResNoObj, proto.ResNoBaseVDI, proto.ResNotFound:
		return exitMissing
	case proto.ResVDIExist:
		return exitExists
	case proto.ResNoSpace, proto.ResFullVDI:
		return exitFull
	case proto.ResWaitForFormat, proto.ResWaitForJoin, proto.ResHalt, proto.ResShutdown, proto.ResKilled,
		proto.ResStartup, proto.ResNetworkError, proto.ResVerMismatch, proto.ResJoinFailed, proto.ResClusterError,
		proto.ResNotFormatted:
		return exitSysFail
	}
	return exitFailure
}

// hint is advice for a result code, or "".
func hint(r proto.Result) string {
	switch r {
	case proto.ResWaitForFormat, proto.ResNotFormatted:
		return "the cluster is not formatted yet: run 'dog cluster format'"
	case proto.ResWaitForJoin:
		return "the cluster waits for its nodes to (re)join: check 'dog node list'"
	case proto.ResHalt:
		return "too few nodes are alive to keep the data's copies: check 'dog node list'"
	case proto.ResNoVDI:
		return "see 'dog vdi list'"
	case proto.ResNoSpace:
		return "the cluster is out of space: see 'dog node info'"
	case proto.ResVDILocked:
		return "another client holds the VDI (the cluster was formatted with -l)"
	case proto.ResVerMismatch:
		return "is this sheep a different version?"
	}
	return ""
}

// describe turns a command's error into its exit code and the one line
// printed on stderr: what went wrong and what to do.
func (a *app) describe(err error) (int, string) {
	var (
		xe  *exitError
		ue  usageError
		ce  *connError
		un  unsupported
		oe  *opError
		se  *serverError
		res proto.Result
	)
	what := ""
	if errors.As(err, &oe) {
		what = oe.what + ": "
	}
	switch {
	case errors.Is(err, errCanceled):
		return exitSuccess, ""
	case errors.As(err, &xe):
		return xe.code, xe.msg
	case errors.As(err, &ue):
		return exitUsage, ue.msg
	case errors.Is(err, parse.ErrInvalid):
		return exitUsage, what + err.Error()
	case errors.As(err, &ce):
		var dns *net.DNSError
		if errors.As(ce.err, &dns) {
			return exitSysFail, "cannot connect to sheep at " + ce.addr + ": unknown host " + dns.Name + " (use -a to give the address of a node)"
		}
		msg := "cannot connect to sheep at " + ce.addr + ": " + netReason(ce.err)
		if errors.Is(ce.err, context.DeadlineExceeded) {
			msg += fmt.Sprintf(" (after %s; --timeout waits longer)", a.timeout)
		}
		return exitSysFail, msg + ": is sheep running? (use -a/-p to choose another node)"
	case errors.As(err, &un):
		return exitFailure, un.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return exitSysFail, what + fmt.Sprintf("no answer from sheep within %s (use --timeout to wait longer)", a.timeout)
	case errors.Is(err, context.Canceled):
		return exitFailure, what + "interrupted"
	case errors.Is(err, client.ErrConnClosed):
		return exitSysFail, what + "lost the connection to sheep: " + netReason(err)
	case errors.Is(err, backup.ErrNotBackup), errors.Is(err, backup.ErrVersion), errors.Is(err, backup.ErrCorrupt):
		return exitFailure, err.Error()
	case errors.As(err, &res):
		msg := what + res.Error()
		if errors.As(err, &se) && se.msg != "" && (res == proto.ResInvalidParms || res == proto.ResNoSupport || res == proto.ResEIO || res == proto.ResSystemError) {
			msg += " (" + se.msg + ")"
		}
		if h := hint(res); h != "" {
			msg += ": " + h
		}
		return exitCode(res), msg
	}
	return exitFailure, err.Error()
}

// netReason says briefly why a connection failed.
func netReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		return "timed out"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "host unreachable"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return "unknown host " + dns.Name
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}
