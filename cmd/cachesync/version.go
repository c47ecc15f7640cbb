package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
)

// Version is set at build time with -ldflags "-X main.Version=v1.2.3".
var Version = ""

type versionCommand struct{}

func (c *versionCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("version", "version")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	v := Version
	if v == "" {
		v = "devel"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	fmt.Fprintf(os.Stdout, "cachesync %s %s %s/%s\n", v, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}
