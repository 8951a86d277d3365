package http

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/iothub/iothub"
)

func (s *Server) registerIAM() {
	s.api("POST", "/api/v1/orgs", iothub.RoleAdmin, s.createOrg)
	s.api("GET", "/api/v1/orgs", iothub.RoleViewer, s.listOrgs)
	s.api("POST", "/api/v1/orgs/{orgId}/apikeys", iothub.RoleAdmin, s.createAPIKey)
	s.api("GET", "/api/v1/orgs/{orgId}/apikeys", iothub.RoleAdmin, s.listAPIKeys)
	s.api("DELETE", "/api/v1/orgs/{orgId}/apikeys/{id}", iothub.RoleAdmin, s.revokeAPIKey)
	s.api("GET", "/api/v1/audit", iothub.RoleAdmin, s.listAudit)
}

func (s *Server) createOrg(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	if !p.Bootstrap {
		return iothub.Errorf(iothub.EFORBIDDEN, "only the bootstrap key creates organisations")
	}
	var req struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	req.Name = strings.TrimSpace(req.Name)
	if req.Name == "" || len(req.Name) > 200 {
		return iothub.Errorf(iothub.EINVALID, "name is required (at most 200 bytes)")
	}
	if req.ID == "" {
		req.ID = "org_" + randomToken(9)
	} else if err := iothub.ValidateKey("id", req.ID); err != nil {
		return err
	}
	o := &iothub.Org{ID: req.ID, Name: req.Name, CreatedAt: s.Now()}
	if err := s.Store.CreateOrg(r.Context(), o); err != nil {
		return err
	}
	s.audit(r.Context(), iothub.AuditEvent{OrgID: o.ID, Kind: "org.created", Remote: remoteIP(r), Reason: "by apikey " + p.KeyID})
	writeJSON(w, http.StatusCreated, o)
	return nil
}

func (s *Server) listOrgs(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	orgs, err := s.Store.Orgs(r.Context())
	if err != nil {
		return err
	}
	visible := orgs[:0]
	for _, o := range orgs {
		if p.CanSee(o.ID) {
			visible = append(visible, o)
		}
	}
	visible, next, err := pageOf(r, visible, func(o *iothub.Org) string { return o.ID })
	if err != nil {
		return err
	}
	writePage(w, "orgs", visible, next)
	return nil
}

// org resolves the {orgId} path value for p: 404 when absent or not p's.
func (s *Server) org(r *http.Request, p iothub.Principal) (*iothub.Org, error) {
	id := r.PathValue("orgId")
	if !p.CanSee(id) {
		return nil, iothub.Errorf(iothub.ENOTFOUND, "organisation %q not found", id)
	}
	return s.Store.Org(r.Context(), id)
}

func (s *Server) createAPIKey(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	o, err := s.org(r, p)
	if err != nil {
		return err
	}
	var req struct {
		Name string      `json:"name"`
		Role iothub.Role `json:"role"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	if !req.Role.Valid() {
		return iothub.Errorf(iothub.EINVALID, "role must be admin, operator or viewer")
	}
	key := NewAPIKey()
	k := &iothub.APIKey{ID: "key_" + randomToken(9), OrgID: o.ID, Name: req.Name, Role: req.Role, Hash: HashAPIKey(key), CreatedAt: s.Now()}
	if err := s.Store.CreateAPIKey(r.Context(), k); err != nil {
		return err
	}
	s.audit(r.Context(), iothub.AuditEvent{OrgID: o.ID, Kind: "apikey.created", Reason: k.ID + " " + string(k.Role), Remote: remoteIP(r)})
	writeJSON(w, http.StatusCreated, map[string]any{"id": k.ID, "key": key, "name": k.Name, "role": k.Role, "orgId": k.OrgID})
	return nil
}

func (s *Server) listAPIKeys(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	o, err := s.org(r, p)
	if err != nil {
		return err
	}
	keys, err := s.Store.APIKeys(r.Context(), o.ID)
	if err != nil {
		return err
	}
	keys, next, err := pageOf(r, keys, func(k *iothub.APIKey) string { return k.ID })
	if err != nil {
		return err
	}
	writePage(w, "apikeys", keys, next)
	return nil
}

func (s *Server) revokeAPIKey(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	o, err := s.org(r, p)
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	if err := s.Store.RevokeAPIKey(r.Context(), o.ID, id); err != nil {
		return err
	}
	s.audit(r.Context(), iothub.AuditEvent{OrgID: o.ID, Kind: "apikey.revoked", Reason: id, Remote: remoteIP(r)})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// listAudit answers GET /api/v1/audit: newest first, filtered by kind
// (or a kind prefix ending in "."), product, device and time, paged by
// cursor; with after, the events since that id, oldest first (to follow).
func (s *Server) listAudit(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	q := r.URL.Query()
	f := iothub.AuditFilter{OrgID: p.OrgID, Kind: q.Get("kind"), ProductKey: q.Get("productKey"), DeviceKey: q.Get("deviceKey")}
	if p.Bootstrap {
		f.OrgID = q.Get("orgId") // empty: every org
	}
	var err error
	if f.Limit, err = queryInt(r, "limit", 100, 1000); err != nil {
		return err
	}
	for name, t := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if v := q.Get(name); v != "" {
			if *t, err = time.Parse(time.RFC3339, v); err != nil {
				return iothub.Errorf(iothub.EINVALID, "%s must be an RFC 3339 time such as 2026-01-02T15:04:05Z", name)
			}
		}
	}
	for name, id := range map[string]*int64{"cursor": &f.Before, "after": &f.After} {
		if v := q.Get(name); v != "" {
			if *id, err = strconv.ParseInt(v, 10, 64); err != nil || *id < 1 {
				return iothub.Errorf(iothub.EINVALID, "%s must be an event id", name)
			}
		}
	}
	if f.Before > 0 && f.After > 0 {
		return iothub.Errorf(iothub.EINVALID, "cursor and after cannot be combined")
	}
	events, err := s.Store.SearchAudit(r.Context(), f)
	if err != nil {
		return err
	}
	body := map[string]any{"events": events}
	if f.After == 0 && len(events) == f.Limit {
		body["nextCursor"] = strconv.FormatInt(events[len(events)-1].ID, 10)
	}
	writeJSON(w, http.StatusOK, body)
	return nil
}
