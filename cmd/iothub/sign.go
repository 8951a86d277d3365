package main

import (
	"fmt"
	"strconv"
	"time"

	"github.com/iothub/iothub/sign"
	"github.com/spf13/cobra"
)

// newSignCmd prints the EnOS MQTT login of a device, ready for
// mosquitto_pub and mosquitto_sub. It works offline.
func newSignCmd() *cobra.Command {
	var pk, dk, secret, method string
	var mode int
	cmd := &cobra.Command{
		Use:   "sign",
		Short: "Print a device's MQTT login (clientId, username, password) as mosquitto_pub flags",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
			clientID, user, pass, err := sign.Credentials(dk, pk, dk, secret, mode, sign.Method(method), ts)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "-i '%s' -u '%s' -P '%s'\n", clientID, user, pass)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&pk, "product", "p", "", "product key")
	f.StringVarP(&dk, "device", "d", "", "device key")
	f.StringVar(&secret, "secret", "", "DeviceSecret (mode 2) or ProductSecret (mode 3)")
	f.IntVar(&mode, "securemode", sign.ModeStatic, "2: static login, 3: dynamic activation")
	f.StringVar(&method, "signmethod", string(sign.SHA256), "sha256, sha1 or md5")
	for _, n := range []string{"product", "device", "secret"} {
		cmd.MarkFlagRequired(n)
	}
	return cmd
}
