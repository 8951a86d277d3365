package mqtt

import (
	"context"
	"encoding/json"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/manage"
)

// renewedCert is the reply data of thing.certificate.renew.
type renewedCert struct {
	Serial   string    `json:"serial"`
	Cert     string    `json:"cert"`
	CAChain  string    `json:"caChain"`
	NotAfter time.Time `json:"notAfter"`
}

// renewCertificate serves thing.certificate.renew: params {csr} → a new
// certificate bound to the session's device. The certificates it replaces
// are revoked as superseded once the new one logs in, or after a grace
// period (the certificate service decides).
func (s *Server) renewCertificate(ctx context.Context, ss *session, params json.RawMessage) (any, int, string) {
	var p struct {
		CSR string `json:"csr"`
	}
	if json.Unmarshal(params, &p) != nil || p.CSR == "" {
		return nil, codeBadFormat, `params must be {"csr": "<PEM certificate request>"}`
	}
	dev, err := s.cfg.Store.Device(ctx, ss.dev.ProductKey, ss.dev.DeviceKey)
	if err != nil {
		return nil, codeNotFound, "device not found"
	}
	c, err := s.cfg.Manage.RenewCertificate(ctx, manage.Actor{Remote: ss.remote, By: "device " + dev.ProductKey + "/" + dev.DeviceKey}, dev, p.CSR)
	switch iothub.ErrorCode(err) {
	case "":
	case iothub.EINVALID:
		return nil, codeBadFormat, iothub.ErrorMessage(err)
	case iothub.ECONFLICT:
		return nil, codeKeyExists, iothub.ErrorMessage(err)
	case iothub.ENOTFOUND:
		return nil, codeNotFound, iothub.ErrorMessage(err)
	default:
		s.log.Error("mqtt: certificate renewal", "productKey", dev.ProductKey, "deviceKey", dev.DeviceKey, "error", err)
		return nil, codeInternal, "renewal failed"
	}
	return renewedCert{Serial: c.Serial, Cert: c.CertPEM, CAChain: string(s.cfg.Certs.ChainPEM()), NotAfter: c.NotAfter}, codeOK, ""
}
