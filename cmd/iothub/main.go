// Command iothub runs the hub (serve) and administers it through the REST
// API (org, apikey, product, device, cert, ca, audit, crl).
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := newRootCmd()
	ran := false
	root.PersistentPreRun = func(*cobra.Command, []string) { ran = true }
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "iothub:", err)
		os.Exit(exitCode(err, ran))
	}
}
