package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/gosheep/gosheep/client"
	"github.com/gosheep/gosheep/cmd/dog/internal/backup"
	"github.com/gosheep/gosheep/proto"
)

// runNoServer runs dog against a port nothing listens on: a command that
// validates its arguments before talking to a sheep fails with 64, one
// that gets as far as connecting fails with 2.
func runNoServer(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	full := append([]string{"-a", "127.0.0.1", "-p", strconv.Itoa(closedPort(t)), "--timeout", "5s"}, args...)
	code := run(context.Background(), full, env{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errb, loc: time.UTC})
	return result{out.Bytes(), errb.Bytes(), code}
}

func TestUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string // in the message
	}{
		{nil, "missing subcommand"},
		{[]string{"frob"}, `unknown command "frob"`},
		{[]string{"vdi"}, "missing subcommand"},
		{[]string{"vdi", "frob"}, `unknown command "frob" for "dog vdi"`},
		{[]string{"vdi", "list", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"-o", "yaml", "vdi", "list"}, "want text or json"},
		{[]string{"-p", "0", "vdi", "list"}, "want 1..65535"},
		{[]string{"--timeout", "-1s", "vdi", "list"}, "positive duration"},
		{[]string{"--timeout", "soon", "vdi", "list"}, "invalid argument"},
		{[]string{"vdi", "create"}, "missing VDI and SIZE"},
		{[]string{"vdi", "create", "v"}, "missing SIZE"},
		{[]string{"vdi", "create", "v", "10G", "extra"}, `unexpected argument "extra"`},
		{[]string{"vdi", "create", "v", "12Q"}, `vdi size "12Q"`},
		{[]string{"vdi", "create", "v", "0"}, "greater than zero"},
		{[]string{"vdi", "create", "v", "-1"}, "unknown shorthand flag: '1'"},
		{[]string{"vdi", "create", "v", "--", "-1"}, `vdi size "-1"`},
		{[]string{"vdi", "create", "-c", "3:1", "v", "1G"}, `copies "3:1"`},
		{[]string{"vdi", "create", "-c", "0", "v", "1G"}, `copies "0"`},
		{[]string{"vdi", "create", "-z", "40", "v", "1G"}, `block size shift "40"`},
		{[]string{"vdi", "create", strings.Repeat("n", 256), "1G"}, "vdi name"},
		{[]string{"vdi", "read", "v", "x"}, `offset "x"`},
		{[]string{"vdi", "read", "v", "0", "1Z"}, `length "1Z"`},
		{[]string{"vdi", "read", "-s", "0", "v"}, `snapshot id "0"`},
		{[]string{"vdi", "write", "v", "1", "2", "3"}, `unexpected argument "3"`},
		{[]string{"vdi", "reservation"}, "missing subcommand"},
		{[]string{"vdi", "reservation", "show"}, "missing VDI"},
		{[]string{"vdi", "reservation", "clear", "a", "b"}, `unexpected argument "b"`},
		{[]string{"vdi", "snapshot", "-s", "7", "v"}, "must not be a number"},
		{[]string{"vdi", "clone", "src", "dst"}, "give the snapshot"},
		{[]string{"vdi", "rollback", "v"}, "give the snapshot"},
		{[]string{"vdi", "resize", "v", "big"}, `vdi size "big"`},
		{[]string{"vdi", "backup", "v"}, "give the snapshot"},
		{[]string{"vdi", "setattr", "v"}, "missing KEY"},
		{[]string{"vdi", "setattr", "-d", "v", "k", "val"}, "do not give a value"},
		{[]string{"vdi", "getattr", "v", ""}, "attribute key"},
		{[]string{"vdi", "object", "-i", "x", "v"}, `object index "x"`},
		{[]string{"vdi", "chap", "set", "v", "--user", "u"}, "--user and --secret are required"},
		{[]string{"vdi", "chap", "set", "v", "--user", "u", "--secret", "s", "--mutual-user", "m"}, "both --mutual-user and --mutual-secret"},
		{[]string{"vdi", "chap", "set", "v", "--user", "u", "--secret", "samesamesame", "--mutual-user", "m", "--mutual-secret", "samesamesame"}, "must differ"},
		{[]string{"vdi", "import", "v", "-", "--size", "nope"}, `--size "nope"`},
		{[]string{"vdi", "restore", "--tag", strings.Repeat("t", 300), "v"}, "snapshot tag"},
		{[]string{"cluster", "format", "-c", "x"}, `copies "x"`},
		{[]string{"cluster", "format", "-z", "19"}, `block size shift "19"`},
		{[]string{"cluster", "format", "-b", "tree"}, "only the \"plain\" store"},
		{[]string{"cluster", "info", "extra"}, `unexpected argument "extra"`},
		{[]string{"cluster", "recover", "force"}, `unknown command "force"`},
		{[]string{"node", "kill"}, "missing NODE-ID"},
		{[]string{"node", "kill", "-l", "3"}, "either -l or a node id"},
		{[]string{"node", "recovery", "set-throttle"}, "missing MAX-RATE"},
		{[]string{"node", "recovery", "set-throttle", "fast"}, `max rate "fast"`},
		{[]string{"node", "recovery", "set-throttle", "1M", "--concurrency", "-2"}, "--concurrency -2"},
	} {
		r := runNoServer(t, "", c.args...)
		if r.code != exitUsage || !strings.Contains(string(r.err), c.want) {
			t.Errorf("dog %s: %s; want exit 64 saying %q", strings.Join(c.args, " "), r, c.want)
		}
		if lines := strings.Split(strings.TrimSpace(string(r.err)), "\n"); !strings.Contains(lines[len(lines)-1], c.want) {
			t.Errorf("dog %s: the last line of stderr is not the error: %q", strings.Join(c.args, " "), r.err)
		}
	}
}

// Commands with valid arguments reach for the sheep: exit 2 with advice.
func TestNoServer(t *testing.T) {
	for _, args := range [][]string{
		{"cluster", "info"}, {"cluster", "format"}, {"node", "list"}, {"node", "kill", "0"},
		{"vdi", "list"}, {"vdi", "create", "v", "1G"}, {"vdi", "read", "v"}, {"vdi", "check", "v"},
		{"vdi", "setattr", "v", "k", "val"}, {"node", "recovery", "-P"},
	} {
		r := runNoServer(t, "", args...)
		if r.code != exitSysFail || !strings.Contains(string(r.err), "connection refused: is sheep running? (use -a/-p to choose another node)") {
			t.Errorf("dog %s: %s", strings.Join(args, " "), r)
		}
	}
}

func TestDescribe(t *testing.T) {
	a, _, _ := testApp("text", false)
	for _, c := range []struct {
		err  error
		code int
		msg  string
	}{
		{errCanceled, exitSuccess, ""},
		{usageErrorf("bad"), exitUsage, "bad"},
		{failf(fmt.Errorf("client: GET_VDI_INFO to x: %w", proto.ResNoVDI), "Failed to open VDI v"), exitMissing, "Failed to open VDI v: No VDI found: see 'dog vdi list'"},
		{failf(proto.ResNoTag, "Failed to open VDI v (tag=t)"), exitMissing, "Failed to open VDI v (tag=t): Failed to find requested tag"},
		{failf(&serverError{code: proto.ResVDIExist, msg: `vdi "v" already exists`}, "Failed to create VDI v"), exitExists, "Failed to create VDI v: VDI exists already"},
		{failf(proto.ResNoSpace, "Failed to write VDI v"), exitFull, "Failed to write VDI v: Server has no space for new objects: the cluster is out of space: see 'dog node info'"},
		{proto.ResFullVDI, exitFull, "Maximum number of VDIs reached"},
		{failf(proto.ResWaitForFormat, "x"), exitSysFail, "x: Waiting for cluster to be formatted: the cluster is not formatted yet: run 'dog cluster format'"},
		{proto.ResHalt, exitSysFail, "IO has halted as there are not enough living nodes: too few nodes are alive to keep the data's copies: check 'dog node list'"},
		{failf(&serverError{code: proto.ResInvalidParms, msg: "block size shift 40 out of range"}, "Failed"), exitFailure, "Failed: Invalid parameters (block size shift 40 out of range)"},
		{failf(fmt.Errorf("client: READ_OBJ to x: %w", client.ErrConnClosed), "Failed to read VDI v"), exitSysFail, "Failed to read VDI v: lost the connection to sheep"},
		{failf(context.DeadlineExceeded, "Failed to read VDI v"), exitSysFail, "Failed to read VDI v: no answer from sheep within 1m0s (use --timeout to wait longer)"},
		{unsupported{what: "vdi check"}, exitFailure, "vdi check: not supported by this server"},
		{failf(fmt.Errorf("%w: checksum mismatch in the record of object 3", backup.ErrCorrupt), "Failed to restore v"), exitFailure, "Failed to restore v: corrupt backup stream: checksum mismatch in the record of object 3"},
		{&exitError{code: exitMissing, msg: "Attribute 'k' not found"}, exitMissing, "Attribute 'k' not found"},
		{errors.New("plain"), exitFailure, "plain"},
	} {
		code, msg := a.describe(c.err)
		if code != c.code || !strings.HasPrefix(msg, c.msg) || strings.Contains(msg, "\n") {
			t.Errorf("describe(%v) = %d, %q; want %d, %q", c.err, code, msg, c.code, c.msg)
		}
	}
}

// Every command documents itself with an example, and --help works.
func TestHelp(t *testing.T) {
	a, _, _ := testApp("text", false)
	root := a.rootCmd()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Example == "" {
			t.Errorf("%s has no Example", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			if sub.Name() != "help" {
				walk(sub)
			}
		}
		args := append(strings.Fields(c.CommandPath())[1:], "--help")
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, env{stdout: &out, stderr: &errb, stdin: strings.NewReader("")}); code != 0 || !strings.Contains(out.String(), "Examples:") {
			t.Errorf("dog %s: exit %d, output %q", strings.Join(args, " "), code, out.String())
		}
	}
	walk(root)
}

// Confirmation: "yes" goes ahead, anything else cancels (exit 0, as
// sheepdog), and without a terminal -f is required.
func TestConfirm(t *testing.T) {
	for _, c := range []struct {
		tty   bool
		input string
		err   error
	}{
		{true, "yes\n", nil}, {true, "YES please\n", nil}, {true, "no\n", errCanceled}, {true, "", errCanceled},
	} {
		a, _, errb := testApp("text", false)
		a.stdin = strings.NewReader(c.input)
		a.terminal = func(f any) (bool, int) { return c.tty && f == a.stdin, 80 }
		if err := a.confirm("Continue? [yes/no]: ", "doing it", "-f"); err != c.err {
			t.Errorf("answer %q: %v, want %v", c.input, err, c.err)
		}
		if errb.String() != "Continue? [yes/no]: " {
			t.Errorf("prompt %q", errb.String())
		}
	}
	a, _, _ := testApp("text", false)
	err := a.confirm("Continue? [yes/no]: ", "doing it", "-f")
	var ue usageError
	if !errors.As(err, &ue) || !strings.Contains(ue.msg, "doing it: refusing without confirmation") || !strings.Contains(ue.msg, "pass -f") {
		t.Errorf("without a terminal: %v", err)
	}
}

// Progress bars appear on a terminal only, and never in raw or json mode.
func TestProgressOnlyOnTerminal(t *testing.T) {
	for _, c := range []struct {
		mode string
		tty  bool
		want bool
	}{{"text", true, true}, {"text", false, false}, {"raw", true, false}, {"json", true, false}} {
		a, _, errb := testApp(c.mode, false)
		a.terminal = func(f any) (bool, int) { return c.tty && f == a.stderr, 60 }
		b := a.bar(100, false)
		b.Add(50)
		b.Finish()
		if got := strings.Contains(errb.String(), "%"); got != c.want {
			t.Errorf("%s mode, terminal %v: bar drawn %v: %q", c.mode, c.tty, got, errb.String())
		}
	}
}

func TestAddr(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "localhost:7000"},
		{[]string{"-a", "10.0.0.2"}, "10.0.0.2:7000"},
		{[]string{"-a", "10.0.0.2", "-p", "7001"}, "10.0.0.2:7001"},
		{[]string{"-a", "10.0.0.2:7005"}, "10.0.0.2:7005"},
		{[]string{"-a", "10.0.0.2:7005", "-p", "7001"}, "10.0.0.2:7001"},
		{[]string{"-a", "fd00::1"}, "[fd00::1]:7000"},
		{[]string{"-a", "[fd00::1]:7003"}, "[fd00::1]:7003"},
	} {
		a, _, _ := testApp("text", false)
		root := a.rootCmd()
		if err := root.ParseFlags(c.args); err != nil {
			t.Fatal(err)
		}
		if got := a.addr(); got != c.want {
			t.Errorf("%v: addr %q, want %q", c.args, got, c.want)
		}
	}
}
