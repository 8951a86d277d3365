// Command iothub runs the hub (serve) and administers it through the REST
// API (org, apikey, product, device, cert, ca).
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "iothub:", err)
		os.Exit(1)
	}
}
