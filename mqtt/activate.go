package mqtt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/manage"
	"github.com/iothub/iothub/sign"
)

// activateInfo is the params of thing.activate.info.
type activateInfo struct {
	AssetID      string `json:"assetId"`
	ProductKey   string `json:"productKey"`
	DeviceKey    string `json:"deviceKey"`
	DeviceSecret string `json:"deviceSecret"`
}

// loginActivation checks a securemode 3 login, signed with the
// ProductSecret. Every refusal after a valid product signature carries the
// same code (770 semantics), whether the device is unknown, already
// activated or disabled, so the answer does not tell whether it exists.
func (s *Server) loginActivation(ctx context.Context, cl *conn, l sign.Login, password, remote string, now time.Time) (*session, *refusal) {
	if !s.limits.actAddr.take(remote, now) || !s.limits.actProduct.take(l.ProductKey, now) {
		return nil, &refusal{code: codeBusy, reason: "activation throttled"}
	}
	p, err := s.cfg.Store.Product(ctx, l.ProductKey)
	if err != nil {
		if iothub.ErrorCode(err) != iothub.ENOTFOUND {
			return nil, &refusal{code: codeUnavailable, reason: "store: " + err.Error()}
		}
		l.Verify(dummySecret, password)
		return nil, &refusal{code: codeBadCredentials, reason: "activation: unknown product"}
	}
	if ref := s.loginPolicy(p, l, now); ref != nil {
		ref.reason = "activation: " + ref.reason
		return nil, ref
	}
	if !l.Verify(p.ProductSecret, password) {
		return nil, &refusal{code: codeBadCredentials, orgID: p.OrgID, reason: "activation: bad product signature"}
	}
	if !p.DynamicActivation {
		return nil, &refusal{code: codeNotAuthorized, orgID: p.OrgID, reason: "770: dynamic activation is off"}
	}
	if p.AuthMode == iothub.AuthCertificate && !overTLS(cl) {
		// The push carries the DeviceSecret, with which a key can be
		// enrolled for the device: never in clear.
		return nil, &refusal{code: codeNotAuthorized, orgID: p.OrgID, reason: "746: certificate product must activate over TLS"}
	}
	// A static login's online write may still be queued: write it before
	// deciding whether the device is already activated.
	s.side.Sync()
	d, err := s.cfg.Store.Device(ctx, l.ProductKey, l.DeviceKey)
	switch {
	case err == nil:
		if d.State != iothub.StateInactive || d.ActivatedAt != nil {
			return nil, &refusal{code: codeNotAuthorized, orgID: p.OrgID, reason: "770: device already activated"}
		}
	case iothub.ErrorCode(err) != iothub.ENOTFOUND:
		return nil, &refusal{code: codeUnavailable, orgID: p.OrgID, reason: "store: " + err.Error()}
	case !p.AutoRegister:
		return nil, &refusal{code: codeNotAuthorized, orgID: p.OrgID, reason: "770: unknown device, auto-registration off"}
	default:
		d, err = s.autoRegister(ctx, p, l.DeviceKey, remote, now)
		if err != nil {
			return nil, &refusal{code: codeNotAuthorized, orgID: p.OrgID, reason: "770: auto-registration: " + iothub.ErrorMessage(err)}
		}
	}
	info, _ := json.Marshal(struct {
		ID      string       `json:"id"`
		Version string       `json:"version"`
		Method  string       `json:"method"`
		Params  activateInfo `json:"params"`
	}{"1", "1.0", "thing.activate.info", activateInfo{d.AssetID, d.ProductKey, d.DeviceKey, d.DeviceSecret}})
	pfx := extPrefix(d.ProductKey, d.DeviceKey)
	return &session{
		dev:           iothub.DeviceID{ProductKey: d.ProductKey, DeviceKey: d.DeviceKey},
		orgID:         d.OrgID,
		activation:    true,
		sysPrefix:     sysPrefix(d.ProductKey, d.DeviceKey),
		extPrefix:     pfx,
		actReply:      pfx + activateTopic + replySuffix,
		secretVersion: d.SecretVersion,
		actInfo:       info,
	}, nil
}

// autoRegister creates a device for an activation of an unknown key.
func (s *Server) autoRegister(ctx context.Context, p *iothub.Product, deviceKey, remote string, now time.Time) (*iothub.Device, error) {
	d, err := s.cfg.Manage.CreateDevice(ctx, manage.Actor{Remote: remote, By: "securemode 3 auto-registration"}, p, deviceKey, "")
	if err != nil {
		if iothub.ErrorCode(err) != iothub.ECONFLICT || errors.Is(err, iothub.ErrDeviceLimit) {
			return nil, err
		}
		// Created concurrently: activate that one if still inactive.
		if d, err = s.cfg.Store.Device(ctx, p.ProductKey, deviceKey); err != nil {
			return nil, err
		}
		if d.State != iothub.StateInactive || d.ActivatedAt != nil {
			return nil, iothub.Errorf(iothub.ECONFLICT, "device already activated")
		}
		return d, nil
	}
	return d, nil
}

// pushActivation writes thing.activate.info to an activation session,
// which never subscribed to it.
func (s *Server) pushActivation(ss *session) {
	if err := s.writePublish(ss.cl, ss.extPrefix+activateTopic, ss.actInfo); err != nil {
		s.log.Warn("mqtt: activation push failed", "productKey", ss.dev.ProductKey, "deviceKey", ss.dev.DeviceKey, "error", err)
	}
}

// maxRegisterBatch caps the devices of one thing.device.register.
const maxRegisterBatch = 100

// registeredDevice is one entry of the thing.device.register reply.
type registeredDevice struct {
	AssetID      string `json:"assetId"`
	ProductKey   string `json:"productKey"`
	DeviceKey    string `json:"deviceKey"`
	DeviceSecret string `json:"deviceSecret"`
}

// registerSubDevices serves thing.device.register. Only a gateway may ask
// (iothub.GatewayMayRegister is the rule), at most maxRegisterBatch devices
// per request and at the gwRegister pace; every entry is checked before
// anything is created, and a failure part way removes what the request
// created, so a refusal leaves nothing behind. Reply codes: 1009 not a
// gateway, a product that does not accept gateway registration or a
// certificate-mode product over plain TCP, or its device limit; 705
// product not found (or in another org); 702 deviceKey exists; 429 too
// many registrations; 1220 and 1008 bad or too large params.
func (s *Server) registerSubDevices(ctx context.Context, ss *session, params json.RawMessage) (any, int, string) {
	gw, err := s.product(ctx, ss.dev.ProductKey)
	if err != nil {
		return nil, codeInternal, "store error"
	}
	if gw.NodeType != iothub.NodeGateway {
		s.registerRefused(ss, "not a gateway")
		return nil, codeNoPermission, "only a gateway may register devices"
	}
	var reqs []struct {
		ProductKey string `json:"productKey"`
		DeviceKey  string `json:"deviceKey"`
		DeviceName any    `json:"deviceName"`
	}
	if err := json.Unmarshal(params, &reqs); err != nil || len(reqs) == 0 {
		return nil, codeBadFormat, "params must be a non-empty list"
	}
	if len(reqs) > maxRegisterBatch {
		return nil, codeTooLarge, fmt.Sprintf("at most %d devices per request", maxRegisterBatch)
	}
	if !s.limits.gwRegister.takeN(ss.dev.ProductKey+"/"+ss.dev.DeviceKey, len(reqs), s.now()) {
		s.registerRefused(ss, "throttled")
		return nil, codeTooMany, "too many registrations from this gateway; retry later"
	}
	products := make([]*iothub.Product, len(reqs))
	for i, r := range reqs {
		p, err := s.cfg.Store.Product(ctx, r.ProductKey)
		if err == nil {
			err = iothub.GatewayMayRegister(gw, p, ss.tls)
		}
		switch iothub.ErrorCode(err) {
		case "":
			products[i] = p
		case iothub.ENOTFOUND:
			s.registerRefused(ss, "product not found: "+r.ProductKey)
			return nil, codeNotFound, "product not found: " + r.ProductKey
		case iothub.EFORBIDDEN:
			s.registerRefused(ss, iothub.ErrorMessage(err))
			return nil, codeNoPermission, iothub.ErrorMessage(err)
		default:
			return nil, codeInternal, "store error"
		}
	}
	by := manage.Actor{Remote: ss.remote, By: "gateway " + ss.dev.ProductKey + "/" + ss.dev.DeviceKey}
	res := make([]registeredDevice, 0, len(reqs))
	for i, r := range reqs {
		name, _ := r.DeviceName.(string)
		d, err := s.cfg.Manage.CreateDevice(ctx, by, products[i], r.DeviceKey, name)
		if err != nil {
			s.removeRegistered(ctx, res)
			switch {
			case errors.Is(err, iothub.ErrDeviceLimit):
				return nil, codeNoPermission, "device limit reached for " + r.ProductKey
			case iothub.ErrorCode(err) == iothub.ECONFLICT:
				return nil, codeKeyExists, "deviceKey exists: " + r.DeviceKey
			case iothub.ErrorCode(err) == iothub.EINVALID:
				return nil, codeBadFormat, iothub.ErrorMessage(err)
			}
			return nil, codeInternal, "store error"
		}
		res = append(res, registeredDevice{d.AssetID, d.ProductKey, d.DeviceKey, d.DeviceSecret})
	}
	// The gateway registered them to connect them: they join its topology.
	subs := make([]iothub.DeviceID, len(res))
	for i, d := range res {
		subs[i] = iothub.DeviceID{ProductKey: d.ProductKey, DeviceKey: d.DeviceKey}
	}
	if err := s.cfg.Store.AddSubDevices(ctx, ss.dev, subs); err != nil {
		s.removeRegistered(ctx, res)
		return nil, codeNotStored, msgNotStored
	}
	return res, codeOK, ""
}

// removeRegistered removes the devices a refused registration created.
func (s *Server) removeRegistered(ctx context.Context, created []registeredDevice) {
	for _, d := range created {
		if err := s.cfg.Store.DeleteDevice(ctx, d.ProductKey, d.DeviceKey); err != nil {
			s.log.Error("mqtt: removing a device of a refused registration", "productKey", d.ProductKey, "deviceKey", d.DeviceKey, "error", err)
		}
	}
}

// registerRefused audits a refused thing.device.register.
func (s *Server) registerRefused(ss *session, why string) {
	s.audit(iothub.AuditEvent{Time: s.now(), OrgID: ss.orgID, Kind: "device.register_refused",
		ProductKey: ss.dev.ProductKey, DeviceKey: ss.dev.DeviceKey, Remote: ss.remote, Reason: why})
}
