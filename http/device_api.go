package http

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/manage"
	"github.com/iothub/iothub/sign"
)

// SignWindow is how far a device request's timestamp may be from the hub's clock.
const SignWindow = 5 * time.Minute

func (s *Server) registerDeviceAPI() {
	s.handle("POST", "/device/v1/{pk}/{dk}/certificates", s.deviceEnroll)
	s.handle("POST", "/device/v1/{pk}/{dk}/certificates/{serial}/revoke", s.deviceRevoke)
}

// deviceSigned is the signature part of every device-authenticated request.
type deviceSigned struct {
	Timestamp  json.RawMessage `json:"timestamp"` // ms since epoch, number or string
	SignMethod string          `json:"signMethod"`
	Sign       string          `json:"sign"`
}

// authenticateDevice checks a device request signed over pairs (plus
// deviceKey, productKey, timestamp) with the DeviceSecret. Every failure
// answers the same 401, so a caller learns nothing about which devices exist.
func (s *Server) authenticateDevice(r *http.Request, req deviceSigned, pairs ...sign.Pair) (*iothub.Device, error) {
	pk, dk := r.PathValue("pk"), r.PathValue("dk")
	limitKey := "device:" + remoteIP(r) + "/" + pk + "/" + dk
	if !s.allow(limitKey, false) || !s.allow("device:"+remoteIP(r), false) {
		return nil, iothub.Errorf(iothub.ETOOMANY, "too many failed device requests; retry later")
	}
	refuse := func(reason string) (*iothub.Device, error) {
		s.allow(limitKey, true)
		s.allow("device:"+remoteIP(r), true)
		// F13: the row carries the org of the product named, so that org's
		// admin sees failed attempts on its devices.
		var org string
		if prod, err := s.Store.Product(r.Context(), pk); err == nil {
			org = prod.OrgID
		}
		s.audit(r.Context(), iothub.AuditEvent{OrgID: org, Kind: "device_api.refused", ProductKey: pk, DeviceKey: dk, Remote: remoteIP(r), Reason: reason})
		return nil, iothub.Errorf(iothub.EUNAUTHORIZED, "device authentication failed")
	}
	ts := strings.Trim(string(req.Timestamp), `"`)
	ms, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return nil, iothub.Errorf(iothub.EINVALID, "timestamp must be milliseconds since the epoch")
	}
	if d := s.Now().Sub(time.UnixMilli(ms)); d > SignWindow || d < -SignWindow {
		return nil, iothub.Errorf(iothub.EUNAUTHORIZED, "timestamp is more than %v away from the hub's clock", SignWindow)
	}
	if req.SignMethod == "" {
		req.SignMethod = string(sign.SHA256)
	}
	if strings.ToLower(req.SignMethod) != string(sign.SHA256) {
		return nil, iothub.Errorf(iothub.EINVALID, "signMethod must be sha256")
	}
	d, err := s.Store.Device(r.Context(), pk, dk)
	if iothub.ErrorCode(err) == iothub.ENOTFOUND {
		return refuse("unknown device")
	} else if err != nil {
		return nil, err
	}
	pairs = append(pairs, sign.Pair{Key: "deviceKey", Value: dk}, sign.Pair{Key: "productKey", Value: pk}, sign.Pair{Key: "timestamp", Value: ts})
	if !sign.Verify(sign.SHA256, pairs, d.DeviceSecret, req.Sign) {
		return refuse("bad signature")
	}
	if d.State == iothub.StateDisabled {
		return refuse("device disabled")
	}
	// F9: a signed request is good once. Its signature is unique to its
	// body and timestamp, so it is remembered for as long as the timestamp
	// is acceptable, in the store every node shares.
	used := sha256.Sum256([]byte(pk + "\x00" + dk + "\x00" + strings.ToLower(req.Sign)))
	err = s.Store.UseRequest(r.Context(), hex.EncodeToString(used[:]), time.UnixMilli(ms).Add(SignWindow))
	if iothub.ErrorCode(err) == iothub.ECONFLICT {
		return refuse("replayed request")
	} else if err != nil {
		return nil, err
	}
	// A client certificate presented over HTTPS must be one that could log
	// this device in over MQTT: chained to a trusted CA, valid, not
	// revoked, naming this device.
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		prod, err := s.Store.Product(r.Context(), pk)
		if err != nil {
			return nil, err
		}
		if _, err := s.Certs.AuthorizeClient(prod, dk, r.TLS.PeerCertificates, s.Now()); err != nil {
			return refuse("client certificate: " + iothub.ErrorMessage(err))
		}
	}
	return d, nil
}

// CSRDigest is the csrSha256 value a device signs: hex SHA-256 of the CSR PEM text.
func CSRDigest(csrPEM string) string {
	h := sha256.Sum256([]byte(csrPEM))
	return hex.EncodeToString(h[:])
}

func (s *Server) deviceEnroll(w http.ResponseWriter, r *http.Request) {
	var req struct {
		deviceSigned
		CSR       string `json:"csr"`
		ValidDays int    `json:"validDays"`
	}
	err := decode(r, &req)
	var d *iothub.Device
	if err == nil {
		d, err = s.authenticateDevice(r, req.deviceSigned, sign.Pair{Key: "csrSha256", Value: CSRDigest(req.CSR)})
	}
	var c *iothub.Certificate
	if err == nil {
		c, err = s.Manage.EnrollCertificate(r.Context(), deviceActor(r, d), d, req.CSR, req.ValidDays)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, s.issued(c))
}

func (s *Server) deviceRevoke(w http.ResponseWriter, r *http.Request) {
	var req deviceSigned
	serial := r.PathValue("serial")
	err := decode(r, &req)
	var d *iothub.Device
	if err == nil {
		d, err = s.authenticateDevice(r, req, sign.Pair{Key: "serial", Value: serial})
	}
	var c *iothub.Certificate
	if err == nil {
		c, err = s.Manage.DeviceCertificate(r.Context(), d, serial)
	}
	if err == nil {
		c, err = s.Manage.RevokeCertificate(r.Context(), deviceActor(r, d), c, "cessationOfOperation")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, certView{c, c.Status(s.Now())})
}

// deviceActor is a device calling the device API, for the audit row.
func deviceActor(r *http.Request, d *iothub.Device) manage.Actor {
	return manage.Actor{Remote: remoteIP(r), By: "device " + d.ProductKey + "/" + d.DeviceKey}
}
