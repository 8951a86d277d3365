package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/iothub/iothub/sign"
	"github.com/spf13/cobra"
)

// Output formats of iothub sign.
const (
	signArgs = "args" // -i … -u … -P …, for mosquitto_pub $(iothub sign …)
	signEnv  = "env"  // IOTHUB_CLIENT_ID=… lines, for eval "$(iothub sign …)"
	signJSON = "json" // {"clientId":…,"username":…,"password":…}
)

// newSignCmd prints the EnOS MQTT login of a device, ready for
// mosquitto_pub and mosquitto_sub. It works offline.
func newSignCmd() *cobra.Command {
	var pk, dk, secret, secretFile, method, format string
	var mode int
	cmd := &cobra.Command{
		Use:   "sign",
		Short: "Print a device's MQTT login (clientId, username, password), e.g. as mosquitto_pub flags",
		Long: `Print a device's EnOS MQTT login. Formats:
  args  -i CLIENTID -u USERNAME -P PASSWORD, unquoted, for: mosquitto_pub $(iothub sign …) …
  env   IOTHUB_CLIENT_ID=… IOTHUB_USERNAME=… IOTHUB_PASSWORD=…, shell-quoted, for: eval "$(iothub sign --format env …)"
  json  {"clientId":…,"username":…,"password":…}`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != signArgs && format != signEnv && format != signJSON {
				return usageErrorf("unknown --format %q: args, env or json", format)
			}
			secret, err := readSecret(cmd, "secret", secret, secretFile)
			if err != nil {
				return err
			}
			ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
			clientID, user, pass, err := sign.Credentials(dk, pk, dk, secret, mode, sign.Method(method), ts)
			if err != nil {
				return usageErrorf("%v", err)
			}
			return printLogin(cmd.OutOrStdout(), format, clientID, user, pass)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&pk, "product", "p", "", "product key")
	f.StringVarP(&dk, "device", "d", "", "device key")
	f.StringVar(&secret, "secret", "", "DeviceSecret (mode 2) or ProductSecret (mode 3); see also --secret-file")
	f.StringVar(&secretFile, "secret-file", "", "read the secret from this file (- for stdin) instead of --secret")
	f.IntVar(&mode, "securemode", sign.ModeStatic, "2: static login, 3: dynamic activation")
	f.StringVar(&method, "signmethod", string(sign.SHA256), "sha256, sha1 or md5")
	f.StringVar(&format, "format", signArgs, "output: args, env or json")
	for _, n := range []string{"product", "device"} {
		cmd.MarkFlagRequired(n)
	}
	cmd.MarkFlagsMutuallyExclusive("secret", "secret-file")
	cmd.MarkFlagsOneRequired("secret", "secret-file")
	return cmd
}

// printLogin writes the login in format.
func printLogin(w io.Writer, format, clientID, user, pass string) error {
	switch format {
	case signJSON:
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		return enc.Encode(map[string]string{"clientId": clientID, "username": user, "password": pass})
	case signEnv:
		_, err := fmt.Fprintf(w, "IOTHUB_CLIENT_ID=%s\nIOTHUB_USERNAME=%s\nIOTHUB_PASSWORD=%s\n",
			shellQuote(clientID), shellQuote(user), shellQuote(pass))
		return err
	}
	// Inside $(…) the shell splits on blanks and expands globs, and never
	// removes quotes: the values go out bare, so they must need neither.
	for _, v := range []string{clientID, user} {
		if strings.ContainsAny(v, " \t\n*?[\\'\"") {
			return usageErrorf("%q cannot be passed unquoted through $(…); use --format env", v)
		}
	}
	_, err := fmt.Fprintf(w, "-i %s -u %s -P %s\n", clientID, user, pass)
	return err
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
