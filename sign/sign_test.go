package sign

import (
	"strings"
	"testing"
)

// The vector from PROTOCOL.md.
var vector = Login{ClientID: "123456", DeviceKey: "test", ProductKey: "654321", Timestamp: "1548753362502"}

func TestVectorContent(t *testing.T) {
	got := Content(vector.Pairs(), "abcdefg")
	want := "clientId123456deviceKeytestproductKey654321timestamp1548753362502abcdefg"
	if got != want {
		t.Fatalf("content = %q, want %q", got, want)
	}
}

func TestVectorSignatures(t *testing.T) {
	for _, tc := range []struct {
		m    Method
		want string
	}{
		{SHA256, "b99032d49c706f7b27b22ab5cd2dd3c56a31e1bcbbc83ba0a2a6bb3272fbb166"},
		{HMACSHA256, "b99032d49c706f7b27b22ab5cd2dd3c56a31e1bcbbc83ba0a2a6bb3272fbb166"},
		{SHA1, "53d00561032c47b8555b768a08fde176a6f0d267"},
		{HMACSHA1, "53d00561032c47b8555b768a08fde176a6f0d267"},
		{MD5, "b040b0189975e6704dbb2c217189fa3b"},
		{HMACMD5, "b040b0189975e6704dbb2c217189fa3b"},
	} {
		got, err := Compute(tc.m, vector.Pairs(), "abcdefg")
		if err != nil || got != tc.want {
			t.Errorf("%s: got %q, %v; want %q", tc.m, got, err, tc.want)
		}
		l := vector
		l.SignMethod = tc.m
		if !l.Verify("abcdefg", strings.ToUpper(tc.want)) || !l.Verify("abcdefg", tc.want) {
			t.Errorf("%s: vector does not verify in both cases", tc.m)
		}
		if l.Verify("abcdefh", tc.want) {
			t.Errorf("%s: wrong secret verifies", tc.m)
		}
	}
}

func TestVerifyRejects(t *testing.T) {
	l := vector
	l.SignMethod = SHA256
	good, _ := Compute(SHA256, l.Pairs(), "abcdefg")
	for _, bad := range []string{"", good[:63], good + "0", "zz" + good[2:], strings.Repeat("0", 64)} {
		if l.Verify("abcdefg", bad) {
			t.Errorf("password %q verified", bad)
		}
	}
	if Verify("sha512", l.Pairs(), "abcdefg", good) {
		t.Error("unknown method verified")
	}
}

func TestParseLoginVariants(t *testing.T) {
	for _, tc := range []struct{ clientID, cid string }{
		{"dev01|securemode=2,signmethod=sha256,timestamp=1700000000000|", "dev01"},
		{"dev01{ip=10.0.0.5,version=enos-mqtt-2.2.16,compress=DEFAULT}|securemode=2,signmethod=hmacsha256,timestamp=1700000000000|", "dev01{ip=10.0.0.5,version=enos-mqtt-2.2.16,compress=DEFAULT}"},
		{"pk.dev01|timestamp=1721000000123.4568,securemode=2,signmethod=SHA1|", "pk.dev01"},
		{"dev01|securemode=2,signmethod=md5,timestamp=1|trailing", "dev01"},
	} {
		l, err := ParseLogin(tc.clientID, "dev01&pk")
		if err != nil {
			t.Fatalf("%q: %v", tc.clientID, err)
		}
		if l.ClientID != tc.cid || l.DeviceKey != "dev01" || l.ProductKey != "pk" || l.SecureMode != 2 {
			t.Errorf("%q: parsed %+v", tc.clientID, l)
		}
	}
}

func TestParseLoginRefuses(t *testing.T) {
	for _, tc := range []struct{ clientID, username string }{
		{"dev01|securemode=2,signmethod=sha256,timestamp=1|", "dev01"},
		{"dev01|securemode=2,signmethod=sha256,timestamp=1|", "&pk"},
		{"dev01|securemode=2,signmethod=sha256,timestamp=1|", "dk&"},
		{"dev01|securemode=2,signmethod=sha256,timestamp=1|", "dk&pk&x"},
		{"dev01", "dev01&pk"},
		{"dev01|securemode=2,signmethod=sha256,timestamp=1", "dev01&pk"},
		{"dev01|securemode=9,signmethod=sha256,timestamp=1|", "dev01&pk"},
		{"dev01|securemode=2,signmethod=sha512,timestamp=1|", "dev01&pk"},
		{"dev01|signmethod=sha256,timestamp=1|", "dev01&pk"},
		{strings.Repeat("a", MaxFieldLen+1) + "|securemode=2,signmethod=sha256|", "dev01&pk"},
	} {
		if l, err := ParseLogin(tc.clientID, tc.username); err == nil {
			t.Errorf("ParseLogin(%q, %q) = %+v, want error", tc.clientID, tc.username, l)
		}
	}
}

func TestCredentialsRoundTrip(t *testing.T) {
	for _, mode := range []int{ModeStatic, ModeDynamic} {
		cid, user, pass, err := Credentials("dev01", "pk", "dev01", "s3cret", mode, SHA256, "1700000000000")
		if err != nil {
			t.Fatal(err)
		}
		l, err := ParseLogin(cid, user)
		if err != nil {
			t.Fatal(err)
		}
		if l.SecureMode != mode || !l.Verify("s3cret", pass) {
			t.Errorf("mode %d: round trip failed: %+v", mode, l)
		}
	}
}

// FuzzParseLogin: any CONNECT clientId, username and password: no panic,
// accepted logins are well formed, and signing what was parsed round-trips.
func FuzzParseLogin(f *testing.F) {
	f.Add("dev01|securemode=2,signmethod=sha256,timestamp=1|", "dev01&pk", "00")
	f.Add("a{b=c}|securemode=3,signmethod=hmacsha1,timestamp=1.5|", "a&b", "ff")
	f.Add("||||", "&&&", "")
	f.Fuzz(func(t *testing.T, clientID, username, password string) {
		l, err := ParseLogin(clientID, username)
		if err != nil {
			return
		}
		if l.DeviceKey == "" || l.ProductKey == "" || strings.Contains(l.ClientID, "|") {
			t.Fatalf("accepted malformed login %+v", l)
		}
		if l.SecureMode != ModeStatic && l.SecureMode != ModeDynamic && l.SecureMode != 4 {
			t.Fatalf("accepted secure mode %d", l.SecureMode)
		}
		if l.Verify("secret", password) {
			if want, _ := Compute(l.SignMethod, l.Pairs(), "secret"); !strings.EqualFold(want, password) && l.SignMethod != HMACSHA1 {
				t.Fatalf("password %q verified but is not the signature", password)
			}
		}
		// What a device builds from the parsed fields parses back to them
		// and verifies.
		cid, user, pass, err := Credentials(l.ClientID, l.ProductKey, l.DeviceKey, "secret", l.SecureMode, l.SignMethod, l.Timestamp)
		if err != nil {
			t.Fatalf("credentials of an accepted login: %v", err)
		}
		back, err := ParseLogin(cid, user)
		if err != nil || back != l {
			t.Fatalf("round trip of %+v: %+v, %v", l, back, err)
		}
		if !back.Verify("secret", pass) {
			t.Fatalf("round trip of %+v does not verify", l)
		}
	})
}

func BenchmarkVerifySHA256(b *testing.B) {
	l := vector
	l.SignMethod = SHA256
	pass, _ := Compute(SHA256, l.Pairs(), "abcdefg")
	b.ReportAllocs()
	for b.Loop() {
		if !l.Verify("abcdefg", pass) {
			b.Fatal("does not verify")
		}
	}
}
