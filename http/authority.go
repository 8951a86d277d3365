package http

import (
	"net/http"
	"strings"

	"github.com/iothub/iothub"
)

// registerAuthority serves the hub CA lifecycle (bootstrap key only) and
// the public trust material: the bundle, its signature, and each CA's
// certificate and CRL at the URLs its certificates name.
func (s *Server) registerAuthority() {
	s.api("GET", "/api/v1/authority", iothub.RoleAdmin, s.listAuthorities)
	s.api("POST", "/api/v1/authority/rotate", iothub.RoleAdmin, s.rotateAuthority)
	s.api("POST", "/api/v1/authority/{id}/retire", iothub.RoleAdmin, s.retireAuthority)
	s.handle("GET", "/ca-bundle.pem", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(s.Certs.BundlePEM())
	})
	s.handle("GET", "/ca-bundle.pem.sig", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(s.Certs.BundleSignature())
	})
	s.handle("GET", "/ca/{file}", func(w http.ResponseWriter, r *http.Request) {
		id, ok := strings.CutSuffix(r.PathValue("file"), ".pem")
		pem, found := s.Certs.AuthorityPEM(id)
		if !ok || !found {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(pem)
	})
	s.handle("GET", "/crl/{id}", func(w http.ResponseWriter, r *http.Request) {
		der, ok := s.Certs.CRLOf(r.PathValue("id"))
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(der)
	})
}

// bootstrapOnly refuses every key but the bootstrap key: the hub's CAs
// belong to no organisation.
func bootstrapOnly(p iothub.Principal) error {
	if !p.Bootstrap {
		return iothub.Errorf(iothub.EFORBIDDEN, "only the bootstrap key manages the hub's CAs")
	}
	return nil
}

func (s *Server) listAuthorities(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	if err := bootstrapOnly(p); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"authorities": s.Certs.Authorities()})
	return nil
}

func (s *Server) rotateAuthority(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	if err := bootstrapOnly(p); err != nil {
		return err
	}
	var req struct {
		Root bool `json:"root"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	id, issuingID, err := s.Manage.RotateAuthority(r.Context(), actor(r, p), req.Root)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, map[string]string{"id": id, "issuingId": issuingID})
	return nil
}

func (s *Server) retireAuthority(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	if err := bootstrapOnly(p); err != nil {
		return err
	}
	ids, err := s.Manage.RetireAuthority(r.Context(), actor(r, p), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"retired": ids})
	return nil
}
