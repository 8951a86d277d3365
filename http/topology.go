package http

import (
	"net/http"

	"github.com/iothub/iothub"
)

func (s *Server) registerTopology() {
	const subs = "/api/v1/products/{pk}/devices/{dk}/subdevices"
	s.api("GET", subs, iothub.RoleViewer, s.listSubDevices)
	s.api("POST", subs, iothub.RoleOperator, s.addSubDevices)
	s.api("DELETE", subs+"/{spk}/{sdk}", iothub.RoleOperator, s.removeSubDevice)
}

// deviceRef names a device in topology requests and answers.
type deviceRef struct {
	ProductKey string `json:"productKey"`
	DeviceKey  string `json:"deviceKey"`
}

func (s *Server) listSubDevices(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	gw, err := s.device(r.Context(), p, r)
	if err != nil {
		return err
	}
	ids, err := s.Store.SubDevices(r.Context(), iothub.DeviceID{ProductKey: gw.ProductKey, DeviceKey: gw.DeviceKey})
	if err != nil {
		return err
	}
	out := make([]deviceRef, len(ids))
	for i, id := range ids {
		out[i] = deviceRef{id.ProductKey, id.DeviceKey}
	}
	writeJSON(w, http.StatusOK, map[string]any{"subDevices": out})
	return nil
}

// addSubDevices puts devices of the caller's org in a gateway's topology:
// {"subDevices":[{"productKey","deviceKey"}]}.
func (s *Server) addSubDevices(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	gw, err := s.device(r.Context(), p, r)
	if err != nil {
		return err
	}
	prod, err := s.product(r.Context(), p, gw.ProductKey)
	if err != nil {
		return err
	}
	var req struct {
		SubDevices []deviceRef `json:"subDevices"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	if len(req.SubDevices) == 0 || len(req.SubDevices) > 1000 {
		return iothub.Errorf(iothub.EINVALID, "subDevices must list 1 to 1000 devices")
	}
	subs := make([]*iothub.Device, len(req.SubDevices))
	for i, ref := range req.SubDevices {
		d, err := s.Store.Device(r.Context(), ref.ProductKey, ref.DeviceKey)
		if err == nil && !p.CanSee(d.OrgID) {
			err = iothub.Errorf(iothub.ENOTFOUND, "device %q not found in product %q", ref.DeviceKey, ref.ProductKey)
		}
		if err != nil {
			return err
		}
		subs[i] = d
	}
	if err := s.Manage.AddSubDevices(r.Context(), actor(r, p), prod, gw, subs); err != nil {
		return err
	}
	return s.listSubDevices(w, r, p)
}

func (s *Server) removeSubDevice(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	gw, err := s.device(r.Context(), p, r)
	if err != nil {
		return err
	}
	sub := iothub.DeviceID{ProductKey: r.PathValue("spk"), DeviceKey: r.PathValue("sdk")}
	owner, err := s.Store.GatewayOf(r.Context(), sub)
	if err != nil || owner != (iothub.DeviceID{ProductKey: gw.ProductKey, DeviceKey: gw.DeviceKey}) {
		return iothub.Errorf(iothub.ENOTFOUND, "device %q of product %q is not a sub-device of this gateway", sub.DeviceKey, sub.ProductKey)
	}
	if err := s.Manage.RemoveSubDevices(r.Context(), actor(r, p), gw, []iothub.DeviceID{sub}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
