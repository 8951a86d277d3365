package pki

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/iothub/iothub"
)

// TestRotationSurvivesReopen: after rotations and a retirement, a second
// open of the directory sees the same CAs with the same statuses; the
// server certificates come from the active issuing CA; retiring what is
// active or unknown changes nothing.
func TestRotationSurvivesReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	a, err := OpenAuthority(dir, AuthorityOptions{})
	if err != nil {
		t.Fatal(err)
	}
	first := a.IssuingCA()
	if _, _, err := a.Rotate(false); err != nil {
		t.Fatal(err)
	}
	rootID, issuingID, err := a.Rotate(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{rootID, issuingID} {
		if _, err := a.Retire(id); iothub.ErrorCode(err) != iothub.ECONFLICT {
			t.Fatalf("retiring active CA %s: %v, want ECONFLICT", id, err)
		}
	}
	if _, err := a.Retire("00"); iothub.ErrorCode(err) != iothub.ENOTFOUND {
		t.Fatalf("retiring an unknown CA: %v, want ENOTFOUND", err)
	}
	if _, err := a.Retire(keyID(first)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Retire(keyID(first)); iothub.ErrorCode(err) != iothub.ECONFLICT {
		t.Fatalf("retiring twice: %v, want ECONFLICT", err)
	}
	before := a.Authorities()

	b, err := OpenAuthority(dir, AuthorityOptions{})
	if err != nil {
		t.Fatal(err)
	}
	after := b.Authorities()
	if len(after) != 5 || len(after) != len(before) {
		t.Fatalf("reopened with %d CAs, had %d (want 5)", len(after), len(before))
	}
	for i := range before {
		if before[i] != after[i] {
			t.Fatalf("CA %d changed on reopen: %+v → %+v", i, before[i], after[i])
		}
	}
	if keyID(b.IssuingCA()) != issuingID || keyID(b.Root()) != rootID {
		t.Fatal("the reopened authority has other active CAs")
	}
	for _, c := range b.ServerCertificates() {
		if c.Leaf.CheckSignatureFrom(b.IssuingCA()) != nil {
			t.Fatal("a server certificate does not come from the active issuing CA")
		}
	}
}

// TestServerRenewedBeforeExpiry: RenewServerIfDue leaves current server
// certificates alone and re-issues them once they near expiry.
func TestServerRenewedBeforeExpiry(t *testing.T) {
	a, err := OpenAuthority(filepath.Join(t.TempDir(), "ca"), AuthorityOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old := a.ServerCertificates()[0].Leaf
	if renewed, err := a.RenewServerIfDue(time.Now()); err != nil || renewed {
		t.Fatalf("fresh certificates renewed: %v %v", renewed, err)
	}
	renewed, err := a.RenewServerIfDue(old.NotAfter.Add(-serverRenewBefore + time.Hour))
	if err != nil || !renewed {
		t.Fatalf("certificates near expiry not renewed: %v %v", renewed, err)
	}
	if a.ServerCertificates()[0].Leaf.SerialNumber.Cmp(old.SerialNumber) == 0 {
		t.Fatal("the renewed server certificate is the old one")
	}
}
