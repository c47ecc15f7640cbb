// Command cachesync keeps Redis a consistent cache of PostgreSQL tables.
//
//	cachesync run --config FILE               run every cache of the config
//	cachesync resync --config FILE CACHE      rebuild one cache from a snapshot, then keep streaming
//	cachesync check --config FILE [CACHE...]  compare Redis with PostgreSQL (--sample N, --repair, --lookup, --json)
//	cachesync status --config FILE            each cache's mode, keys, hit ratio, lag, queue, last error (--json)
//	cachesync version                         print the version
//
// One file per command (run.go, resync.go, check.go, status.go, version.go).
// run wires the daemon's parts: the change feed (internal/changefeed), the
// write-behind drainer (internal/drain), refreshes (internal/refresh), the
// key-miss listener (internal/keymiss) and the HTTP API (internal/httpapi)
// over one engine (internal/engine).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// command is one subcommand: it parses its own flags from args.
type command interface {
	Run(ctx context.Context, args []string) error
}

var commands = map[string]command{
	"run":     &runCommand{},
	"resync":  &resyncCommand{},
	"check":   &checkCommand{},
	"status":  &statusCommand{},
	"version": &versionCommand{},
}

const usage = `cachesync keeps Redis a consistent cache of PostgreSQL tables.

Usage:
  cachesync run --config FILE               run every cache of the config
  cachesync resync --config FILE CACHE      rebuild one cache from a snapshot, then keep streaming
  cachesync check --config FILE [CACHE...]  compare Redis with PostgreSQL (--sample N, --repair, --lookup, --json)
  cachesync status --config FILE            each cache's mode, keys, hit ratio, lag, queue, last error (--json)
  cachesync version                         print the version

Run "cachesync COMMAND -h" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

// run dispatches to a command and turns its error into an exit code:
// 0 success, 1 failure, 2 bad usage.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "cachesync: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	err := cmd.Run(ctx, args[1:])
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		return 0 // SIGINT/SIGTERM while starting: nothing was left half done
	case errors.Is(err, errInconsistent):
		fmt.Fprintf(stderr, "cachesync %s: %v\n", args[0], err)
		return 3
	case errors.As(err, new(usageError)):
		fmt.Fprintf(stderr, "cachesync %s: %v\n", args[0], err)
		return 2
	default:
		// One line, whatever the error: drivers put attempts on lines of their own.
		fmt.Fprintf(stderr, "cachesync: %s\n", strings.Join(strings.Fields(err.Error()), " "))
		return 1
	}
}

// usageError is a mistake in the command line.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: cachesync %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args; a flag error is a usage error.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	return nil
}
