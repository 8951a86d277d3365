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
	s.api("DELETE", "/api/v1/cas/{id}", iothub.RoleAdmin, s.removeCA)
	s.api("POST", "/api/v1/cas/{id}/revocations", iothub.RoleAdmin, s.revokeExternal)
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
	c, err := s.Manage.EnrollCertificate(r.Context(), actor(r, p), d, req.CSR, req.ValidDays)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, s.issued(c))
	return nil
}

func (s *Server) listCertificates(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	d, err := s.device(r.Context(), p, r)
	if err != nil {
		return err
	}
	certs, err := s.Manage.Certificates(r.Context(), d)
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

func (s *Server) getCertificate(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	c, err := s.Manage.Certificate(r.Context(), r.PathValue("serial"), p.CanSee)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, certView{c, c.Status(s.Now())})
	return nil
}

func (s *Server) revokeCertificate(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	c, err := s.Manage.Certificate(r.Context(), r.PathValue("serial"), p.CanSee)
	if err != nil {
		return err
	}
	var req struct {
		Reason string `json:"reason"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	revoked, err := s.Manage.RevokeCertificate(r.Context(), actor(r, p), c, req.Reason)
	if err != nil {
		return err
	}
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
	ca, err := s.Manage.RegisterCA(r.Context(), actor(r, p), prod, req.Cert)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, ca)
	return nil
}

func (s *Server) getCA(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	ca, err := s.Manage.ExternalCA(r.Context(), r.PathValue("id"), p.CanSee)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ca)
	return nil
}

func (s *Server) verifyCA(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	ca, err := s.Manage.ExternalCA(r.Context(), r.PathValue("id"), p.CanSee)
	if err != nil {
		return err
	}
	var req struct {
		Cert string `json:"cert"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	verified, err := s.Manage.VerifyCA(r.Context(), actor(r, p), ca, req.Cert)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": verified.ID, "status": "verified", "productKey": verified.ProductKey})
	return nil
}

// removeCA deletes an external CA, verified or not (F7).
func (s *Server) removeCA(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	ca, err := s.Manage.ExternalCA(r.Context(), r.PathValue("id"), p.CanSee)
	if err != nil {
		return err
	}
	if err := s.Manage.RemoveCA(r.Context(), actor(r, p), ca); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// revokeExternal revokes a leaf of an external CA by serial (F7).
func (s *Server) revokeExternal(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	ca, err := s.Manage.ExternalCA(r.Context(), r.PathValue("id"), p.CanSee)
	if err != nil {
		return err
	}
	var req struct {
		Serial string `json:"serial"`
		Reason string `json:"reason"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	rev, err := s.Manage.RevokeExternal(r.Context(), actor(r, p), ca, req.Serial, req.Reason)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, rev)
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
		if !s.ocspLimit.allow(remoteIP(r)) {
			w.Header().Set("Retry-After", "1")
			s.writeError(w, r, iothub.Errorf(iothub.ETOOMANY, "too many OCSP requests; retry later"))
			return
		}
		req, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
		if err != nil {
			s.writeError(w, r, iothub.Errorf(iothub.ETOOLARGE, "OCSP request larger than 64 KiB"))
			return
		}
		s.answerOCSP(w, r, req)
	})
}

func (s *Server) answerOCSP(w http.ResponseWriter, r *http.Request, req []byte) {
	resp, err := s.Certs.OCSP(req)
	if err != nil {
		s.writeError(w, r, iothub.Errorf(iothub.EINVALID, "malformed OCSP request"))
		return
	}
	w.Header().Set("Content-Type", "application/ocsp-response")
	w.Write(resp)
}
