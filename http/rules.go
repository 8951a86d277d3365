package http

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/iothub/iothub"
)

// Limits of a forwarding rule.
const (
	maxRuleName     = 200
	maxWebhookURL   = 2048
	minSecretLen    = 16
	maxSecretLen    = 256
	maxNATSSubject  = 256
	rulesPerOrgMost = 100
)

func (s *Server) registerRules() {
	s.api("POST", "/api/v1/rules", iothub.RoleOperator, s.createRule)
	s.api("GET", "/api/v1/rules", iothub.RoleViewer, s.listRules)
	s.api("GET", "/api/v1/rules/{id}", iothub.RoleViewer, s.getRule)
	s.api("DELETE", "/api/v1/rules/{id}", iothub.RoleOperator, s.deleteRule)
}

// ruleRequest is the body of POST /api/v1/rules.
type ruleRequest struct {
	Name       string             `json:"name"`
	ProductKey string             `json:"productKey"`
	Kinds      []string           `json:"kinds"`
	Webhook    *iothub.Webhook    `json:"webhook"`
	NATS       *iothub.NATSTarget `json:"nats"`
}

// checkWebhook refuses a URL that is not absolute http(s) with a host, or
// that carries credentials (they would show in delivery errors).
func checkWebhook(wh *iothub.Webhook) error {
	u, err := url.Parse(wh.URL)
	switch {
	case err != nil || len(wh.URL) > maxWebhookURL:
		return iothub.Errorf(iothub.EINVALID, "webhook.url is not a URL of at most %d bytes", maxWebhookURL)
	case u.Scheme != "http" && u.Scheme != "https":
		return iothub.Errorf(iothub.EINVALID, "webhook.url must be http:// or https://, not %.16q", u.Scheme)
	case u.Host == "":
		return iothub.Errorf(iothub.EINVALID, "webhook.url needs a host")
	case u.User != nil:
		return iothub.Errorf(iothub.EINVALID, "webhook.url must not carry credentials; the signature authenticates the hub")
	case len(wh.Secret) < minSecretLen || len(wh.Secret) > maxSecretLen:
		return iothub.Errorf(iothub.EINVALID, "webhook.secret must be %d to %d bytes", minSecretLen, maxSecretLen)
	}
	return nil
}

func (s *Server) createRule(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	var req ruleRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	req.Name = strings.TrimSpace(req.Name)
	if req.Name == "" || len(req.Name) > maxRuleName {
		return iothub.Errorf(iothub.EINVALID, "name is required (at most %d bytes)", maxRuleName)
	}
	kinds, err := iothub.ParseDataKinds(req.Kinds)
	if err != nil {
		return err
	}
	switch {
	case (req.Webhook == nil) == (req.NATS == nil):
		return iothub.Errorf(iothub.EINVALID, "a rule needs exactly one target: webhook {url, secret} or nats {subject}")
	case req.Webhook != nil:
		if err := checkWebhook(req.Webhook); err != nil {
			return err
		}
	case !s.NATSForwarding:
		return iothub.Errorf(iothub.EINVALID, "this hub runs without NATS; use a webhook")
	case req.NATS.Subject == "" || len(req.NATS.Subject) > maxNATSSubject ||
		strings.ContainsAny(req.NATS.Subject, "*> \t\r\n") || strings.HasPrefix(req.NATS.Subject, "iothub."):
		return iothub.Errorf(iothub.EINVALID, "nats.subject must be a literal subject (no wildcards, spaces or iothub. prefix)")
	}
	org := p.OrgID
	if req.ProductKey != "" {
		prod, err := s.product(r.Context(), p, req.ProductKey)
		if err != nil {
			return err
		}
		org = prod.OrgID
	}
	existing, err := s.Store.Rules(r.Context(), org)
	if err != nil {
		return err
	}
	if len(existing) >= rulesPerOrgMost {
		return iothub.Errorf(iothub.ETOOLARGE, "an organisation has at most %d rules", rulesPerOrgMost)
	}
	rule := &iothub.Rule{ID: "rule_" + iothub.RandomString(16), OrgID: org, Name: req.Name, ProductKey: req.ProductKey,
		Kinds: kinds, Webhook: req.Webhook, NATS: req.NATS, CreatedAt: s.Now()}
	if err := s.Store.CreateRule(r.Context(), rule); err != nil {
		return err
	}
	s.audit(r.Context(), iothub.AuditEvent{OrgID: org, Kind: "rule.created", ProductKey: req.ProductKey, Remote: remoteIP(r),
		Reason: rule.ID + " by apikey " + p.KeyID})
	if s.Forwarder != nil {
		s.Forwarder.Sync()
	}
	writeJSON(w, http.StatusCreated, map[string]string{"id": rule.ID})
	return nil
}

// shown is a rule as the API shows it: never its secret.
func shown(r *iothub.Rule) *iothub.Rule {
	c := *r
	if c.Webhook != nil {
		c.Webhook = &iothub.Webhook{URL: r.Webhook.URL}
	}
	return &c
}

// ruleOrg is the org whose rules p reads: its own ("" for the bootstrap key: all).
func ruleOrg(p iothub.Principal) string {
	if p.Bootstrap {
		return ""
	}
	return p.OrgID
}

func (s *Server) listRules(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	rules, err := s.Store.Rules(r.Context(), ruleOrg(p))
	if err != nil {
		return err
	}
	out := make([]*iothub.Rule, len(rules))
	for i, rule := range rules {
		out[i] = shown(rule)
	}
	writeJSON(w, http.StatusOK, map[string]any{"rules": out})
	return nil
}

func (s *Server) getRule(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	rule, err := s.Store.Rule(r.Context(), ruleOrg(p), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, shown(rule))
	return nil
}

func (s *Server) deleteRule(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	rule, err := s.Store.Rule(r.Context(), ruleOrg(p), r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := s.Store.DeleteRule(r.Context(), rule.OrgID, rule.ID); err != nil {
		return err
	}
	s.audit(r.Context(), iothub.AuditEvent{OrgID: rule.OrgID, Kind: "rule.deleted", ProductKey: rule.ProductKey, Remote: remoteIP(r),
		Reason: rule.ID + " by apikey " + p.KeyID})
	if s.Forwarder != nil {
		s.Forwarder.Sync()
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
