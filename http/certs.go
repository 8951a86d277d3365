package http

import (
	"encoding/pem"
	"io"
	"net/http"
	"time"

	"github.com/iothub/iothub"
)

func (s *Server) registerCertificates() {
	const dev = "/api/v1/products/{pk}/devices/{dk}"
	s.api("POST", dev+"/certificates", iothub.RoleOperator, s.issueCertificate)
	s.api("GET", dev+"/certificates", iothub.RoleViewer, s.listCertificates)
	s.api("GET", "/api/v1/certificates/{serial}", iothub.RoleViewer, s.getCertificate)
	s.api("POST", "/api/v1/certificates/{serial}/revoke", iothub.RoleOperator, s.revokeCertificate)
	s.api("POST", "/api/v1/cas", iothub.RoleAdmin, s.registerCA)
	s.api("GET", "/api/v1/cas/{id}", iothub.RoleViewer, s.getCA)
	s.api("POST", "/api/v1/cas/{id}/verify", iothub.RoleAdmin, s.verifyCA)
}

// issuedCert is the answer to an enrollment, as API.md names it.
type issuedCert struct {
	Serial    string    `json:"serial"`
	Cert      string    `json:"cert"`
	CAChain   string    `json:"caChain"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
}

func (s *Server) issued(c *iothub.Certificate) issuedCert {
	return issuedCert{Serial: c.Serial, Cert: c.CertPEM, CAChain: string(s.Certs.ChainPEM()), NotBefore: c.NotBefore, NotAfter: c.NotAfter}
}

// certView is a certificate in a listing, with its status now.
type certView struct {
	*iothub.Certificate
	Status string `json:"status"`
}

func (s *Server) issueCertificate(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	d, err := s.device(r.Context(), p, r)
	if err != nil {
		return err
	}
	var req struct {
		CSR       string `json:"csr"`
		ValidDays int    `json:"validDays"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	return s.enroll(w, r, d, req.CSR, req.ValidDays)
}

// enroll issues a certificate for d from csr and writes it: shared by the
// management and the device-authenticated paths.
func (s *Server) enroll(w http.ResponseWriter, r *http.Request, d *iothub.Device, csr string, validDays int) error {
	prod, err := s.Store.Product(r.Context(), d.ProductKey)
	if err != nil {
		return err
	}
	c, err := s.Certs.Enroll(r.Context(), prod, d, csr, validDays)
	if err != nil {
		return err
	}
	s.audit(r.Context(), iothub.AuditEvent{OrgID: d.OrgID, Kind: "cert.issued", ProductKey: d.ProductKey, DeviceKey: d.DeviceKey, Reason: c.Serial, Remote: remoteIP(r)})
	writeJSON(w, http.StatusCreated, s.issued(c))
	return nil
}

func (s *Server) listCertificates(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	d, err := s.device(r.Context(), p, r)
	if err != nil {
		return err
	}
	certs, err := s.Certs.Certificates(r.Context(), d.ProductKey, d.DeviceKey)
	if err != nil {
		return err
	}
	now := s.Now()
	out := make([]certView, len(certs))
	for i, c := range certs {
		out[i] = certView{c, c.Status(now)}
	}
	writeJSON(w, http.StatusOK, map[string]any{"certificates": out})
	return nil
}

// certificate loads {serial} for p: 404 when absent or in another org.
func (s *Server) certificate(r *http.Request, p iothub.Principal) (*iothub.Certificate, error) {
	serial := r.PathValue("serial")
	c, err := s.Certs.Certificate(r.Context(), serial)
	if err == nil && !p.CanSee(c.OrgID) {
		err = iothub.Errorf(iothub.ENOTFOUND, "certificate %q not found", serial)
	}
	return c, err
}

func (s *Server) getCertificate(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	c, err := s.certificate(r, p)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, certView{c, c.Status(s.Now())})
	return nil
}

func (s *Server) revokeCertificate(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	c, err := s.certificate(r, p)
	if err != nil {
		return err
	}
	var req struct {
		Reason string `json:"reason"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	return s.revoke(w, r, c, req.Reason)
}

// revoke revokes c and writes the revoked certificate.
func (s *Server) revoke(w http.ResponseWriter, r *http.Request, c *iothub.Certificate, reason string) error {
	if reason == "" {
		reason = "unspecified"
	}
	revoked, err := s.Certs.Revoke(r.Context(), c.Serial, reason)
	if err != nil {
		return err
	}
	s.audit(r.Context(), iothub.AuditEvent{OrgID: c.OrgID, Kind: "cert.revoked", ProductKey: c.ProductKey, DeviceKey: c.DeviceKey, Reason: c.Serial + " " + reason, Remote: remoteIP(r)})
	writeJSON(w, http.StatusOK, certView{revoked, revoked.Status(s.Now())})
	return nil
}

func (s *Server) registerCA(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	var req struct {
		Cert       string `json:"cert"`
		ProductKey string `json:"productKey"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	prod, err := s.product(r.Context(), p, req.ProductKey)
	if err != nil {
		return err
	}
	ca, err := s.Certs.RegisterCA(r.Context(), prod, req.Cert)
	if err != nil {
		return err
	}
	s.audit(r.Context(), iothub.AuditEvent{OrgID: prod.OrgID, Kind: "ca.registered", ProductKey: prod.ProductKey, Reason: ca.ID, Remote: remoteIP(r)})
	writeJSON(w, http.StatusCreated, ca)
	return nil
}

// externalCA loads {id} for p: 404 when absent or in another org.
func (s *Server) externalCA(r *http.Request, p iothub.Principal) (*iothub.ExternalCA, error) {
	ca, err := s.Certs.ExternalCA(r.Context(), r.PathValue("id"))
	if err == nil && !p.CanSee(ca.OrgID) {
		err = iothub.Errorf(iothub.ENOTFOUND, "CA %q not found", r.PathValue("id"))
	}
	return ca, err
}

func (s *Server) getCA(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	ca, err := s.externalCA(r, p)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ca)
	return nil
}

func (s *Server) verifyCA(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	ca, err := s.externalCA(r, p)
	if err != nil {
		return err
	}
	var req struct {
		Cert string `json:"cert"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	verified, err := s.Certs.VerifyCA(r.Context(), ca.ID, req.Cert)
	if err != nil {
		s.audit(r.Context(), iothub.AuditEvent{OrgID: ca.OrgID, Kind: "ca.verify_refused", ProductKey: ca.ProductKey, Reason: ca.ID + ": " + iothub.ErrorMessage(err), Remote: remoteIP(r)})
		return err
	}
	s.audit(r.Context(), iothub.AuditEvent{OrgID: ca.OrgID, Kind: "ca.verified", ProductKey: ca.ProductKey, Reason: ca.ID, Remote: remoteIP(r)})
	writeJSON(w, http.StatusOK, map[string]any{"id": verified.ID, "status": "verified", "productKey": verified.ProductKey})
	return nil
}

func (s *Server) registerPublic() {
	s.handle("GET", "/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	if s.Metrics != nil {
		s.handle("GET", "/metrics", s.Metrics.ServeHTTP)
	}
	s.handle("GET", "/api/v1/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(openAPI)
	})
	s.handle("GET", "/ca.pem", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(s.Certs.ChainPEM())
	})
	s.handle("GET", "/crl", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(s.Certs.CRL())
	})
	s.handle("GET", "/crl.pem", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		pem.Encode(w, &pem.Block{Type: "X509 CRL", Bytes: s.Certs.CRL()})
	})
	s.handle("POST", "/ocsp", func(w http.ResponseWriter, r *http.Request) {
		req, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
		if err != nil {
			http.Error(w, "OCSP request too large", http.StatusRequestEntityTooLarge)
			return
		}
		s.answerOCSP(w, req)
	})
}

func (s *Server) answerOCSP(w http.ResponseWriter, req []byte) {
	resp, err := s.Certs.OCSP(req)
	if err != nil {
		http.Error(w, "malformed OCSP request", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/ocsp-response")
	w.Write(resp)
}
