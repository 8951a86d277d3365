package sqlite

import (
	"testing"
	"time"

	"github.com/iothub/iothub"
)

func mkCert(serial, pk, dk, key string, notBefore time.Time, days int) *iothub.Certificate {
	return &iothub.Certificate{Serial: serial, OrgID: iothub.DefaultOrgID, ProductKey: pk, DeviceKey: dk,
		PublicKeySHA256: key, CertPEM: "-----BEGIN CERTIFICATE-----\n" + serial, NotBefore: notBefore,
		NotAfter: notBefore.Add(time.Duration(days) * 24 * time.Hour)}
}

func TestCertificates(t *testing.T) {
	db := newDB(t)
	now := time.Now().UTC().Truncate(time.Millisecond)
	c1 := mkCert("0a01", "pk", "d1", "key1", now.Add(-time.Hour), 30)
	c1.CreatedAt = now.Add(-time.Hour)
	must(t, db.CreateCertificate(ctx, c1))
	got, err := db.Certificate(ctx, "0a01")
	must(t, err)
	if got.DeviceKey != "d1" || got.PublicKeySHA256 != "key1" || !got.NotAfter.Equal(c1.NotAfter) || got.RevokedAt != nil || got.CertPEM != c1.CertPEM {
		t.Fatalf("Certificate = %+v", got)
	}
	_, err = db.Certificate(ctx, "ffff")
	wantCode(t, err, iothub.ENOTFOUND)

	// One key binds to one device; the same device may reuse it.
	wantCode(t, db.CreateCertificate(ctx, mkCert("0a02", "pk", "d2", "key1", now, 30)), iothub.ECONFLICT)
	wantCode(t, db.CreateCertificate(ctx, mkCert("0a02", "pk2", "d1", "key1", now, 30)), iothub.ECONFLICT)
	c2 := mkCert("0a02", "pk", "d1", "key1", now, 30)
	must(t, db.CreateCertificate(ctx, c2))
	wantCode(t, db.CreateCertificate(ctx, mkCert("0a02", "pk", "d3", "key3", now, 30)), iothub.ECONFLICT)
	wantCode(t, db.CreateCertificate(ctx, mkCert("", "pk", "d3", "key3", now, 30)), iothub.EINVALID)
	wantCode(t, db.CreateCertificate(ctx, mkCert("0a09", "pk", "d3", "", now, 30)), iothub.EINVALID)
	wantCode(t, db.CreateCertificate(ctx, mkCert("0a09", "pk", "d3", "key3", now, 0)), iothub.EINVALID)
	if _, err := db.Certificate(ctx, "0a09"); iothub.ErrorCode(err) != iothub.ENOTFOUND {
		t.Fatal("refused certificate was stored")
	}

	newest, err := db.CertificateByPublicKey(ctx, "key1")
	must(t, err)
	if newest.Serial != "0a02" {
		t.Fatalf("CertificateByPublicKey = %s, want newest 0a02", newest.Serial)
	}
	_, err = db.CertificateByPublicKey(ctx, "nokey")
	wantCode(t, err, iothub.ENOTFOUND)

	must(t, db.CreateCertificate(ctx, mkCert("0b01", "pk", "d2", "key2", now, 30)))
	list, err := db.CertificatesByDevice(ctx, "pk", "d1")
	must(t, err)
	if len(list) != 2 || list[0].Serial != "0a01" || list[1].Serial != "0a02" {
		t.Fatalf("CertificatesByDevice = %+v", list)
	}

	// Revocation, and the CRL list leaves out expired certificates.
	expired := mkCert("0c01", "pk", "d4", "key4", now.Add(-48*time.Hour), 1)
	must(t, db.CreateCertificate(ctx, expired))
	must(t, db.RevokeCertificate(ctx, "0c01", "keyCompromise", now))
	must(t, db.RevokeCertificate(ctx, "0a01", "superseded", now))
	wantCode(t, db.RevokeCertificate(ctx, "0a01", "keyCompromise", now), iothub.ECONFLICT)
	wantCode(t, db.RevokeCertificate(ctx, "ffff", "keyCompromise", now), iothub.ENOTFOUND)
	wantCode(t, db.RevokeCertificate(ctx, "0a02", "", now), iothub.EINVALID)
	got, _ = db.Certificate(ctx, "0a01")
	if got.RevokedAt == nil || !got.RevokedAt.Equal(now) || got.Reason != "superseded" || got.Status(now) != "revoked" {
		t.Fatalf("revoked certificate = %+v", got)
	}
	revoked, err := db.RevokedCertificates(ctx)
	must(t, err)
	if len(revoked) != 1 || revoked[0].Serial != "0a01" {
		t.Fatalf("RevokedCertificates = %+v", revoked)
	}
}

func TestExternalCAs(t *testing.T) {
	db := newDB(t)
	mkProduct(t, db, "pk")
	ca := &iothub.ExternalCA{ID: "ca1", OrgID: iothub.DefaultOrgID, ProductKey: "pk", CertPEM: "pem1", Fingerprint: "fp1", VerificationCode: "code1"}
	must(t, db.CreateExternalCA(ctx, ca))
	got, err := db.ExternalCA(ctx, "ca1")
	must(t, err)
	if got.Verified || got.VerifiedAt != nil || got.VerificationCode != "code1" || got.Fingerprint != "fp1" || !got.CreatedAt.Equal(ca.CreatedAt) {
		t.Fatalf("ExternalCA = %+v", got)
	}
	wantCode(t, db.CreateExternalCA(ctx, &iothub.ExternalCA{ID: "ca1", ProductKey: "pk", CertPEM: "p", Fingerprint: "fp9"}), iothub.ECONFLICT)
	wantCode(t, db.CreateExternalCA(ctx, &iothub.ExternalCA{ID: "ca2", ProductKey: "pk", CertPEM: "p", Fingerprint: "fp1"}), iothub.ECONFLICT)
	wantCode(t, db.CreateExternalCA(ctx, &iothub.ExternalCA{ID: "ca2", ProductKey: "ghost", CertPEM: "p", Fingerprint: "fp2"}), iothub.ENOTFOUND)
	wantCode(t, db.CreateExternalCA(ctx, &iothub.ExternalCA{ID: "ca2", ProductKey: "pk"}), iothub.EINVALID)
	must(t, db.CreateExternalCA(ctx, &iothub.ExternalCA{ID: "ca2", OrgID: iothub.DefaultOrgID, ProductKey: "pk", CertPEM: "pem2", Fingerprint: "fp2"}))
	_, err = db.ExternalCA(ctx, "ghost")
	wantCode(t, err, iothub.ENOTFOUND)

	at := time.Now().UTC().Truncate(time.Millisecond)
	must(t, db.MarkExternalCAVerified(ctx, "ca1", at))
	wantCode(t, db.MarkExternalCAVerified(ctx, "ca1", at), iothub.ECONFLICT)
	wantCode(t, db.MarkExternalCAVerified(ctx, "ghost", at), iothub.ENOTFOUND)
	list, err := db.ExternalCAs(ctx, "pk")
	must(t, err)
	if len(list) != 2 || list[0].ID != "ca1" || !list[0].Verified || !list[0].VerifiedAt.Equal(at) || list[1].Verified {
		t.Fatalf("ExternalCAs = %+v", list)
	}
	if list, _ := db.ExternalCAs(ctx, "other"); len(list) != 0 {
		t.Fatalf("ExternalCAs(other) = %+v", list)
	}
}

func TestAudit(t *testing.T) {
	db := newDB(t)
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for i, e := range []iothub.AuditEvent{
		{Time: t0, OrgID: "a", Kind: "login.ok", ProductKey: "pk", DeviceKey: "d", Remote: "127.0.0.1:5"},
		{Time: t0.Add(time.Second), OrgID: "b", Kind: "login.refused", Reason: "bad signature"},
		{OrgID: "a", Kind: "cert.revoked"},
	} {
		if err := db.Audit(ctx, e); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
	}
	wantCode(t, db.Audit(ctx, iothub.AuditEvent{OrgID: "a"}), iothub.EINVALID)
	all, err := db.AuditEvents(ctx, "", 0)
	must(t, err)
	if len(all) != 3 || all[0].Kind != "cert.revoked" || all[2].Kind != "login.ok" || all[0].ID != 3 || all[2].ID != 1 {
		t.Fatalf("AuditEvents(all) = %+v", all)
	}
	if all[0].Time.IsZero() || !all[2].Time.Equal(t0) || all[2].Remote != "127.0.0.1:5" || all[2].DeviceKey != "d" {
		t.Fatalf("fields lost: %+v", all)
	}
	a, _ := db.AuditEvents(ctx, "a", 1)
	if len(a) != 1 || a[0].Kind != "cert.revoked" {
		t.Fatalf("AuditEvents(a, 1) = %+v", a)
	}
	b, _ := db.AuditEvents(ctx, "b", 10)
	if len(b) != 1 || b[0].Reason != "bad signature" {
		t.Fatalf("AuditEvents(b) = %+v", b)
	}
}
