package http

import (
	"context"
	"net/http"
	"slices"
	"strings"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

func (s *Server) registerProducts() {
	s.api("POST", "/api/v1/products", iothub.RoleAdmin, s.createProduct)
	s.api("GET", "/api/v1/products", iothub.RoleViewer, s.listProducts)
	s.api("GET", "/api/v1/products/{pk}", iothub.RoleViewer, s.getProduct)
	s.api("PATCH", "/api/v1/products/{pk}", iothub.RoleAdmin, s.updateProduct)
	s.api("DELETE", "/api/v1/products/{pk}", iothub.RoleAdmin, s.deleteProduct)
	s.api("POST", "/api/v1/products/{pk}/rotate-secret", iothub.RoleAdmin, s.rotateProductSecret)
}

// productSettings are the writable fields of a product; nil leaves a field as it is.
type productSettings struct {
	Name              *string          `json:"name"`
	AuthMode          *iothub.AuthMode `json:"authMode"`
	DynamicActivation *bool            `json:"dynamicActivation"`
	AutoRegister      *bool            `json:"autoRegister"`
	DeviceLimit       *int             `json:"deviceLimit"`
	OfflineTimeoutSec *int             `json:"offlineTimeoutSec"`
	MaxCertDays       *int             `json:"maxCertDays"`
	// AllowGatewayRegistration and SignMethods: see iothub.Product.
	AllowGatewayRegistration *bool     `json:"allowGatewayRegistration"`
	SignMethods              *[]string `json:"signMethods"`
}

func (ps productSettings) apply(p *iothub.Product) error {
	if ps.Name != nil {
		p.Name = strings.TrimSpace(*ps.Name)
	}
	if ps.AuthMode != nil {
		p.AuthMode = *ps.AuthMode
	}
	if ps.DynamicActivation != nil {
		p.DynamicActivation = *ps.DynamicActivation
	}
	if ps.AutoRegister != nil {
		p.AutoRegister = *ps.AutoRegister
	}
	if ps.DeviceLimit != nil {
		p.DeviceLimit = *ps.DeviceLimit
	}
	if ps.OfflineTimeoutSec != nil {
		p.OfflineTimeoutSec = *ps.OfflineTimeoutSec
	}
	if ps.MaxCertDays != nil {
		p.MaxCertDays = *ps.MaxCertDays
	}
	if ps.AllowGatewayRegistration != nil {
		p.AllowGatewayRegistration = *ps.AllowGatewayRegistration
	}
	if ps.SignMethods != nil {
		methods, err := signMethods(*ps.SignMethods)
		if err != nil {
			return err
		}
		p.SignMethods = methods
	}
	switch {
	case p.Name == "" || len(p.Name) > 200:
		return iothub.Errorf(iothub.EINVALID, "name is required (at most 200 bytes)")
	case !p.AuthMode.Valid():
		return iothub.Errorf(iothub.EINVALID, "authMode must be secret or certificate")
	case p.DeviceLimit < 0 || p.OfflineTimeoutSec < 0 || p.MaxCertDays < 0:
		return iothub.Errorf(iothub.EINVALID, "deviceLimit, offlineTimeoutSec and maxCertDays must not be negative")
	case p.MaxCertDays > 3650:
		return iothub.Errorf(iothub.EINVALID, "maxCertDays must be at most 3650")
	}
	return nil
}

// signMethods checks a product's list of login sign methods and returns it
// in lower case without repeats; an empty list accepts every method.
func signMethods(in []string) ([]string, error) {
	var out []string
	for _, m := range in {
		m = strings.ToLower(strings.TrimSpace(m))
		if !sign.Method(m).Valid() {
			return nil, iothub.Errorf(iothub.EINVALID, "signMethods: unknown sign method %q (sha256, hmacsha256, sha1, hmacsha1, md5, hmacmd5)", m)
		}
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out, nil
}

func (s *Server) createProduct(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	var req struct {
		productSettings
		ProductKey string          `json:"productKey"`
		OrgID      string          `json:"orgId"`
		NodeType   iothub.NodeType `json:"nodeType"` // fixed at creation
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	org := p.OrgID
	if req.OrgID != "" {
		if !p.CanSee(req.OrgID) {
			return iothub.Errorf(iothub.ENOTFOUND, "organisation %q not found", req.OrgID)
		}
		if _, err := s.Store.Org(r.Context(), req.OrgID); err != nil {
			return err
		}
		org = req.OrgID
	}
	if req.ProductKey == "" {
		req.ProductKey = iothub.RandomString(iothub.ProductKeyLen)
	} else if err := iothub.ValidateKey("productKey", req.ProductKey); err != nil {
		return err
	}
	prod := &iothub.Product{
		OrgID:         org,
		ProductKey:    req.ProductKey,
		ProductSecret: iothub.RandomString(iothub.SecretLen),
		AuthMode:      iothub.AuthSecret,
		NodeType:      iothub.NodeDevice,
		CreatedAt:     s.Now(),
	}
	if req.NodeType != "" {
		if !req.NodeType.Valid() {
			return iothub.Errorf(iothub.EINVALID, "nodeType must be device or gateway")
		}
		prod.NodeType = req.NodeType
	}
	if err := req.apply(prod); err != nil {
		return err
	}
	if err := s.Store.CreateProduct(r.Context(), prod); err != nil {
		return err
	}
	s.audit(r.Context(), iothub.AuditEvent{OrgID: org, Kind: "product.created", ProductKey: prod.ProductKey, Remote: remoteIP(r)})
	writeJSON(w, http.StatusCreated, prod)
	return nil
}

// product loads {pk} for p: 404 when absent or in another org.
func (s *Server) product(ctx context.Context, p iothub.Principal, pk string) (*iothub.Product, error) {
	prod, err := s.Store.Product(ctx, pk)
	if err == nil && !p.CanSee(prod.OrgID) {
		err = iothub.Errorf(iothub.ENOTFOUND, "product %q not found", pk)
	}
	return prod, err
}

// withoutSecret is a product as shown after creation: the secret only at
// creation and rotation.
func withoutSecret(p *iothub.Product) *iothub.Product {
	c := *p
	c.ProductSecret = ""
	return &c
}

func (s *Server) listProducts(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	org := p.OrgID
	if p.Bootstrap {
		org = r.URL.Query().Get("orgId")
	}
	prods, err := s.Store.Products(r.Context(), org)
	if err != nil {
		return err
	}
	prods, next, err := pageOf(r, prods, func(p *iothub.Product) string { return p.ProductKey })
	if err != nil {
		return err
	}
	out := make([]*iothub.Product, len(prods))
	for i, prod := range prods {
		out[i] = withoutSecret(prod)
	}
	writePage(w, "products", out, next)
	return nil
}

func (s *Server) getProduct(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	prod, err := s.product(r.Context(), p, r.PathValue("pk"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, withoutSecret(prod))
	return nil
}

func (s *Server) updateProduct(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	prod, err := s.product(r.Context(), p, r.PathValue("pk"))
	if err != nil {
		return err
	}
	var req productSettings
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := req.apply(prod); err != nil {
		return err
	}
	if err := s.Store.UpdateProduct(r.Context(), prod); err != nil {
		return err
	}
	s.audit(r.Context(), iothub.AuditEvent{OrgID: prod.OrgID, Kind: "product.updated", ProductKey: prod.ProductKey, Remote: remoteIP(r), Reason: "by apikey " + p.KeyID})
	s.publish(r.Context(), iothub.Event{Kind: iothub.EventProductChanged, ProductKey: prod.ProductKey})
	writeJSON(w, http.StatusOK, withoutSecret(prod))
	return nil
}

func (s *Server) deleteProduct(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	prod, err := s.product(r.Context(), p, r.PathValue("pk"))
	if err != nil {
		return err
	}
	if err := s.Store.DeleteProduct(r.Context(), prod.ProductKey); err != nil {
		return err
	}
	s.audit(r.Context(), iothub.AuditEvent{OrgID: prod.OrgID, Kind: "product.deleted", ProductKey: prod.ProductKey, Remote: remoteIP(r)})
	s.publish(r.Context(), iothub.Event{Kind: iothub.EventProductChanged, ProductKey: prod.ProductKey}) // caches drop it
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) rotateProductSecret(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	prod, err := s.product(r.Context(), p, r.PathValue("pk"))
	if err != nil {
		return err
	}
	prod.ProductSecret = iothub.RandomString(iothub.SecretLen)
	if err := s.Store.UpdateProduct(r.Context(), prod); err != nil {
		return err
	}
	s.audit(r.Context(), iothub.AuditEvent{OrgID: prod.OrgID, Kind: "product.secret_rotated", ProductKey: prod.ProductKey, Remote: remoteIP(r)})
	s.publish(r.Context(), iothub.Event{Kind: iothub.EventProductChanged, ProductKey: prod.ProductKey})
	writeJSON(w, http.StatusOK, prod)
	return nil
}
