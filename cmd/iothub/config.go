package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/pflag"
)

// envName is the environment variable of a flag: IOTHUB_ and the flag's
// name in capitals, dashes as underscores (--data-dir: IOTHUB_DATA_DIR).
func envName(flag string) string {
	return "IOTHUB_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// applyConfig gives every flag of fs not set on the command line its value
// from the environment or, failing that, from the JSON config file (an
// object keyed by flag names; "" for none). Precedence: command line,
// environment, file, default. An unknown key or a bad value is an error.
func applyConfig(fs *pflag.FlagSet, file string) error {
	fromFile := map[string]string{}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("config: %w", err)
		}
		var raw map[string]json.RawMessage
		dec := json.NewDecoder(bytes.NewReader(b))
		if err := dec.Decode(&raw); err != nil {
			return usageErrorf("config %s: not a JSON object: %v", file, err)
		}
		for k, v := range raw {
			if k == "config" || fs.Lookup(k) == nil {
				return usageErrorf("config %s: unknown key %q (keys are the flag names of %s)", file, k, strings.Join(flagNames(fs), ", "))
			}
			var s string
			if json.Unmarshal(v, &s) != nil {
				s = string(v) // a number or a boolean, as written
			}
			fromFile[k] = s
		}
	}
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed || f.Name == "config" {
			return
		}
		v, ok := os.LookupEnv(envName(f.Name))
		from := envName(f.Name)
		if !ok {
			v, ok = fromFile[f.Name]
			from = "config " + file
		}
		if ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = usageErrorf("%s: --%s %q: %v", from, f.Name, v, e)
			}
		}
	})
	return err
}

func flagNames(fs *pflag.FlagSet) []string {
	var names []string
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name != "config" {
			names = append(names, f.Name)
		}
	})
	sort.Strings(names)
	return names
}
