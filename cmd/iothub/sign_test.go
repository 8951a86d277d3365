package main

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// TestSignFormats: each format gives back exactly the three values, as the
// shell (args inside $(…), env through eval) or a JSON reader sees them.
func TestSignFormats(t *testing.T) {
	const cid, user, pass = "SN1|securemode=2,signmethod=sha256,timestamp=1|", "SN1&PK", "abc123"
	login := func(format string) string {
		var b bytes.Buffer
		if err := printLogin(&b, format, cid, user, pass); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	bash := func(script, input string) string {
		out, err := exec.Command("bash", "-c", script, "_", input).CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v %s", err, out)
		}
		return string(out)
	}
	want := strings.Join([]string{cid, user, pass}, "\n") + "\n"
	if got := bash(`set -- $(printf %s "$1"); printf '%s\n' "$2" "$4" "$6"`, login(signArgs)); got != want {
		t.Fatalf("args through $(…): %q, want %q", got, want)
	}
	if got := bash(`eval "$1"; printf '%s\n' "$IOTHUB_CLIENT_ID" "$IOTHUB_USERNAME" "$IOTHUB_PASSWORD"`, login(signEnv)); got != want {
		t.Fatalf("env through eval: %q, want %q", got, want)
	}
	var j struct{ ClientID, Username, Password string }
	if err := json.Unmarshal([]byte(login(signJSON)), &j); err != nil || j.ClientID != cid || j.Username != user || j.Password != pass {
		t.Fatalf("json: %+v %v", j, err)
	}
	// A value the shell would split or glob is refused in args form.
	if err := printLogin(&bytes.Buffer{}, signArgs, "a*b|securemode=2|", user, pass); err == nil {
		t.Fatal("a clientId with * was printed bare")
	}
}
