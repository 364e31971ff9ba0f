package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/gosheep/gosheep/client"
	"github.com/gosheep/gosheep/cmd/dog/internal/progress"
	"github.com/gosheep/gosheep/cmd/dog/internal/render"
)

// env is what dog takes from its process; tests substitute their own.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// terminal reports whether f (one of the above) is an interactive
	// terminal, and its width in columns.
	terminal func(f any) (bool, int)
	now      func() time.Time
	loc      *time.Location
}

// app is one invocation of dog: global options and the connections made.
type app struct {
	env

	host    string
	port    int
	raw     bool
	output  string
	verbose bool
	timeout time.Duration

	root *cobra.Command

	mu    sync.Mutex
	conns map[string]*client.Conn
}

// Output formats (-o).
const (
	outText = "text"
	outJSON = "json"
)

// defaultTimeout bounds waiting for a connection or one answer.
const defaultTimeout = 60 * time.Second

// run executes dog with args and returns its exit code.
func run(ctx context.Context, args []string, e env) int {
	a := &app{env: e, conns: map[string]*client.Conn{}}
	if a.loc == nil {
		a.loc = time.Local
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.terminal == nil {
		a.terminal = func(any) (bool, int) { return false, 0 }
	}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(e.stdin)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	err := root.ExecuteContext(ctx)
	a.closeAll()
	if err == nil {
		return exitSuccess
	}
	code, msg := a.describe(err)
	if msg != "" {
		fmt.Fprintln(e.stderr, msg)
	}
	return code
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "dog",
		Short: "manage a gosheep cluster",
		Long: `dog manages a gosheep cluster: the cluster itself, its nodes and its
virtual disk images (VDIs). It talks to one sheep (-a/-p); the commands and
their output are sheepdog's.

Exit codes: 0 success, 1 failure, 2 cluster or connection trouble,
3 already exists, 4 cluster full, 5 no such VDI/snapshot/attribute,
64 bad command line.`,
		Example: `  dog cluster format -c 3
  dog vdi create vol0 10G
  dog vdi list
  dog -a 10.0.0.2 node list`,
		SilenceErrors:     true,
		SilenceUsage:      true,
		DisableAutoGenTag: true,
		RunE:              a.group,
		Args:              cobra.ArbitraryArgs,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if a.output != outText && a.output != outJSON {
				return usageErrorf("-o/--output %q: want text or json", a.output)
			}
			if a.port <= 0 || a.port > 65535 {
				return usageErrorf("-p/--port %d: want 1..65535", a.port)
			}
			if a.timeout < 0 {
				return usageErrorf("--timeout %s: want a positive duration such as 30s, or 0 to wait forever", a.timeout)
			}
			return nil
		},
	}
	root.CompletionOptions.DisableDefaultCmd = true
	pf := root.PersistentFlags()
	pf.StringVarP(&a.host, "address", "a", "localhost", "address of the sheep to talk to (host, or host:port)")
	pf.IntVarP(&a.port, "port", "p", 7000, "port of the sheep to talk to")
	pf.BoolVarP(&a.raw, "raw", "r", false, "raw output for scripts: no headers, single spaces, sizes in bytes")
	pf.StringVarP(&a.output, "output", "o", outText, "output format: text or json")
	pf.BoolVarP(&a.verbose, "verbose", "v", false, "print more information")
	pf.DurationVar(&a.timeout, "timeout", defaultTimeout, "give up connecting or waiting for an answer after this long (0: wait forever)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err.Error()} })
	root.AddCommand(a.clusterCmd(), a.nodeCmd(), a.vdiCmd())
	a.root = root
	return root
}

// group is the RunE of commands that only hold subcommands.
func (a *app) group(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		cmd.SetOut(a.stderr)
		_ = cmd.Usage()
		return usageErrorf("%s: missing subcommand", cmd.CommandPath())
	}
	return usageErrorf("unknown command %q for %q: see '%s --help'", args[0], cmd.CommandPath(), cmd.CommandPath())
}

// newGroup makes a command that holds subcommands.
func (a *app) newGroup(use, short, example string) *cobra.Command {
	return &cobra.Command{Use: use, Short: short, Example: example, RunE: a.group, Args: cobra.ArbitraryArgs}
}

// args checks the number of positional arguments; names lists them for the
// error message ("VDI", "SIZE").
func args(min, max int, names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < min {
			return usageErrorf("%s: missing %s (see '%s --help')", cmd.CommandPath(), strings.Join(names[len(args):min], " and "), cmd.CommandPath())
		}
		if max >= 0 && len(args) > max {
			return usageErrorf("%s: unexpected argument %q (see '%s --help')", cmd.CommandPath(), args[max], cmd.CommandPath())
		}
		return nil
	}
}

// addr is the sheep dog talks to.
func (a *app) addr() string {
	host, port := strings.Trim(a.host, "[]"), strconv.Itoa(a.port)
	if h, p, err := net.SplitHostPort(a.host); err == nil {
		host = h
		if !a.root.PersistentFlags().Changed("port") {
			port = p
		}
	}
	return net.JoinHostPort(host, port)
}

// json reports whether output is JSON.
func (a *app) json() bool { return a.output == outJSON }

// emit prints v as JSON with -o json, else calls text (if any).
func (a *app) emit(v any, text func(w io.Writer) error) error {
	if a.json() {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	if text == nil {
		return nil
	}
	return text(a.stdout)
}

// opts are the render options.
func (a *app) opts() render.Options { return render.Options{Raw: a.raw, Loc: a.loc} }

// warnf prints a warning on stderr.
func (a *app) warnf(format string, args ...any) {
	fmt.Fprintf(a.stderr, format+"\n", args...)
}

// bar returns a progress bar on stderr when it is a terminal and the
// output is for people; nil (which draws nothing) otherwise.
func (a *app) bar(total uint64, count bool) *progress.Bar {
	if a.raw || a.json() {
		return nil
	}
	tty, width := a.terminal(a.stderr)
	if !tty {
		return nil
	}
	if count {
		return progress.NewCount(a.stderr, width, total)
	}
	return progress.New(a.stderr, width, total)
}

// interactive reports whether dog may ask the user (stdin is a terminal).
func (a *app) interactive() bool {
	tty, _ := a.terminal(a.stdin)
	return tty
}

// confirm asks a yes/no question on stderr; without a terminal to ask on,
// it fails with a usage error saying what would happen (what) and how to
// confirm on the command line (force).
func (a *app) confirm(question, what, force string) error {
	if !a.interactive() {
		return usageErrorf("%s: refusing without confirmation (stdin is not a terminal); pass %s to go ahead", what, force)
	}
	fmt.Fprint(a.stderr, question)
	line, _ := bufio.NewReader(a.stdin).ReadString('\n')
	if !strings.HasPrefix(strings.ToLower(strings.TrimSpace(line)), "yes") {
		return errCanceled
	}
	return nil
}

// noFlagChanged reports whether none of the named flags was given.
func changed(cmd *cobra.Command, name string) bool {
	f := cmd.Flags().Lookup(name)
	return f != nil && f.Changed
}
