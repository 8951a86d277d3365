package iothub

import (
	"strings"
	"testing"
	"time"
)

func TestValidateKey(t *testing.T) {
	for _, ok := range []string{"dev01", "SN-2024.0001_x", "設備1", strings.Repeat("a", MaxKeyLen)} {
		if err := ValidateKey("deviceKey", ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a/b", "a+b", "a#b", "a b", "a\tb", "a\x00b", "a&b", "a|b", "a%b", "\x7f", strings.Repeat("a", MaxKeyLen+1), "\xff\xfe"} {
		err := ValidateKey("deviceKey", bad)
		if ErrorCode(err) != EINVALID {
			t.Errorf("%q accepted (err %v)", bad, err)
		}
	}
}

func TestNewDeviceGeneratesKeyAndSecret(t *testing.T) {
	p := &Product{OrgID: "o", ProductKey: "pk"}
	a, err := NewDevice(p, "", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewDevice(p, "", "", time.Now())
	if a.DeviceKey == b.DeviceKey || a.DeviceSecret == b.DeviceSecret || len(a.DeviceSecret) != SecretLen {
		t.Fatalf("generated values collide or have the wrong size: %+v %+v", a, b)
	}
	if a.State != StateInactive || a.OrgID != "o" || a.ProductKey != "pk" {
		t.Fatalf("bad defaults: %+v", a)
	}
	if _, err := NewDevice(p, "bad/key", "", time.Now()); ErrorCode(err) != EINVALID {
		t.Fatalf("bad key accepted: %v", err)
	}
}

func TestRoles(t *testing.T) {
	if !RoleAdmin.Allows(RoleOperator) || RoleViewer.Allows(RoleOperator) || Role("root").Allows(RoleViewer) || Role("x").Valid() {
		t.Fatal("role order is wrong")
	}
}
