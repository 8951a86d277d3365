package mqtt

import (
	"context"
	"encoding/json"
	"time"

	"github.com/iothub/iothub"
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
func (s *Server) loginActivation(ctx context.Context, l sign.Login, password, remote string, now time.Time) (*session, *refusal) {
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
	if !l.Verify(p.ProductSecret, password) {
		return nil, &refusal{code: codeBadCredentials, orgID: p.OrgID, reason: "activation: bad product signature"}
	}
	if !p.DynamicActivation {
		return nil, &refusal{code: codeNotAuthorized, orgID: p.OrgID, reason: "770: dynamic activation is off"}
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

// autoRegister creates a device for an activation of an unknown key,
// within the product's device limit.
func (s *Server) autoRegister(ctx context.Context, p *iothub.Product, deviceKey, remote string, now time.Time) (*iothub.Device, error) {
	limit := p.DeviceLimit
	if limit <= 0 {
		limit = iothub.DefaultDeviceLimit
	}
	n, err := s.cfg.Store.CountDevices(ctx, p.ProductKey)
	if err != nil {
		return nil, err
	}
	if n >= limit {
		return nil, iothub.Errorf(iothub.ECONFLICT, "device limit reached")
	}
	d, err := iothub.NewDevice(p, deviceKey, "", now)
	if err != nil {
		return nil, err
	}
	if err := s.cfg.Store.CreateDevice(ctx, d); err != nil {
		if iothub.ErrorCode(err) != iothub.ECONFLICT {
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
	s.audit(iothub.AuditEvent{Time: now, OrgID: p.OrgID, Kind: "device.registered",
		ProductKey: p.ProductKey, DeviceKey: deviceKey, Remote: remote, Reason: "auto-registration by securemode 3"})
	return d, nil
}

// pushActivation writes thing.activate.info to an activation session,
// which never subscribed to it.
func (s *Server) pushActivation(ss *session) {
	if err := s.writePublish(ss.cl, ss.extPrefix+activateTopic, ss.actInfo); err != nil {
		s.log.Warn("mqtt: activation push failed", "productKey", ss.dev.ProductKey, "deviceKey", ss.dev.DeviceKey, "error", err)
	}
}

// registerSubDevices serves thing.device.register from a gateway: it
// creates devices in products of the gateway's own org and answers their
// secrets.
func (s *Server) registerSubDevices(ctx context.Context, ss *session, params json.RawMessage) (any, int, string) {
	var reqs []struct {
		ProductKey string `json:"productKey"`
		DeviceKey  string `json:"deviceKey"`
		DeviceName any    `json:"deviceName"`
	}
	if err := json.Unmarshal(params, &reqs); err != nil || len(reqs) == 0 {
		return nil, codeBadFormat, "params must be a non-empty list"
	}
	if len(reqs) > 100 {
		return nil, codeTooLarge, "at most 100 devices per request"
	}
	now := s.now()
	type out struct {
		AssetID      string `json:"assetId"`
		ProductKey   string `json:"productKey"`
		DeviceKey    string `json:"deviceKey"`
		DeviceSecret string `json:"deviceSecret"`
	}
	res := make([]out, 0, len(reqs))
	for _, r := range reqs {
		p, err := s.cfg.Store.Product(ctx, r.ProductKey)
		if err != nil || p.OrgID != ss.orgID {
			return nil, codeNotFound, "product not found: " + r.ProductKey
		}
		n, err := s.cfg.Store.CountDevices(ctx, p.ProductKey)
		limit := p.DeviceLimit
		if limit <= 0 {
			limit = iothub.DefaultDeviceLimit
		}
		if err != nil || n >= limit {
			return nil, codeNoPermission, "device limit reached for " + r.ProductKey
		}
		name, _ := r.DeviceName.(string)
		d, err := iothub.NewDevice(p, r.DeviceKey, name, now)
		if err != nil {
			return nil, codeBadFormat, iothub.ErrorMessage(err)
		}
		if err := s.cfg.Store.CreateDevice(ctx, d); err != nil {
			if iothub.ErrorCode(err) == iothub.ECONFLICT {
				return nil, codeKeyExists, "deviceKey exists: " + r.DeviceKey
			}
			return nil, codeInternal, "store error"
		}
		s.audit(iothub.AuditEvent{Time: now, OrgID: p.OrgID, Kind: "device.registered",
			ProductKey: p.ProductKey, DeviceKey: d.DeviceKey, Remote: ss.remote,
			Reason: "thing.device.register by " + ss.dev.ProductKey + "/" + ss.dev.DeviceKey})
		res = append(res, out{d.AssetID, d.ProductKey, d.DeviceKey, d.DeviceSecret})
	}
	return res, codeOK, ""
}
