// Command dog is gosheep's administration tool, with sheepdog's command
// names, options, output layouts and exit codes:
//
//	dog cluster format|info|shutdown|recover|check
//	dog node list|info|kill|recovery
//	dog vdi create|list|delete|snapshot|clone|rollback|resize|read|write|tree|
//	        object|setattr|getattr|check|backup|restore|export|import|chap
//
// Run `dog --help` or `dog <command> <subcommand> --help` for details.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/term"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], osEnv())
	stop()
	os.Exit(code)
}

// osEnv is the environment of a real process.
func osEnv() env {
	return env{
		stdin:  os.Stdin,
		stdout: os.Stdout,
		stderr: os.Stderr,
		terminal: func(f any) (bool, int) {
			file, ok := f.(*os.File)
			if !ok || !term.IsTerminal(int(file.Fd())) {
				return false, 0
			}
			w, _, err := term.GetSize(int(file.Fd()))
			if err != nil {
				w = 80
			}
			return true, w
		},
		now: time.Now,
		loc: time.Local,
	}
}
