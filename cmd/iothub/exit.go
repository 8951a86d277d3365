package main

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"

	"github.com/iothub/iothub/client"
	"github.com/spf13/cobra"
)

// Exit codes, documented in README.md.
const (
	exitOK           = 0
	exitError        = 1 // the command failed (the hub refused the request, a file could not be read, …)
	exitUsage        = 2 // bad command line: unknown command or flag, wrong arguments, bad flag value
	exitNotFound     = 3 // the hub answered 404
	exitUnauthorised = 4 // the hub answered 401 or 403
	exitUnreachable  = 5 // the hub could not be reached
)

// usageError is a mistake in the command line.
type usageError struct{ error }

func usageErrorf(format string, a ...any) error {
	return usageError{fmt.Errorf(format, a...)}
}

// usageArgs marks what a positional-argument check refuses as a usage error.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// exitCode maps the error of a command to the process exit code. ran
// tells whether the command's own code started: every error cobra returns
// before that (parsing, arguments, required flags) is a usage error.
func exitCode(err error, ran bool) int {
	var ue usageError
	var se *client.StatusError
	var ue2 *url.Error
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue) || !ran:
		return exitUsage
	case errors.As(err, &se) && se.Status == 404:
		return exitNotFound
	case errors.As(err, &se) && (se.Status == 401 || se.Status == 403):
		return exitUnauthorised
	case errors.As(err, &ue2):
		return exitUnreachable
	}
	return exitError
}

// groupCmd is a command that only holds subcommands: given an unknown one
// it fails with a usage error instead of printing help with success.
func groupCmd(use, short string) *cobra.Command {
	return &cobra.Command{
		Use:                        use,
		Short:                      short,
		Args:                       cobra.ArbitraryArgs,
		SuggestionsMinimumDistance: 2,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				cmd.SetOut(cmd.ErrOrStderr())
				cmd.Help()
				return usageErrorf("%s needs a subcommand", cmd.CommandPath())
			}
			msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				msg += "; did you mean " + strings.Join(s, " or ") + "?"
			}
			return usageErrorf("%s (see %s --help)", msg, cmd.CommandPath())
		},
	}
}

// readSecret returns the value of the secret flag name, or the contents of
// file (trimmed; "-" reads stdin) when file is given.
func readSecret(cmd *cobra.Command, name, value, file string) (string, error) {
	if file == "" {
		return value, nil
	}
	var b []byte
	var err error
	if file == "-" {
		b, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 64<<10))
	} else {
		b, err = os.ReadFile(file)
	}
	if err != nil {
		return "", fmt.Errorf("reading the %s: %w", name, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", usageErrorf("the %s file %s is empty", name, file)
	}
	return s, nil
}
