package http

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/iothub/iothub"
)

func (s *Server) registerDevices() {
	const dev = "/api/v1/products/{pk}/devices/{dk}"
	s.api("POST", "/api/v1/products/{pk}/devices", iothub.RoleOperator, s.createDevice)
	s.api("GET", "/api/v1/products/{pk}/devices", iothub.RoleViewer, s.listDevices)
	s.api("GET", dev, iothub.RoleViewer, s.getDevice)
	s.api("DELETE", dev, iothub.RoleOperator, s.deleteDevice)
	s.api("POST", dev+"/disable", iothub.RoleOperator, s.disableDevice)
	s.api("POST", dev+"/enable", iothub.RoleOperator, s.enableDevice)
	s.api("POST", dev+"/reset", iothub.RoleOperator, s.resetDevice)
	s.api("POST", dev+"/services/{serviceId}", iothub.RoleOperator, s.invokeService)
	s.api("POST", dev+"/measurepoints/set", iothub.RoleOperator, s.setMeasurepoints)
	s.api("GET", dev+"/measurepoints", iothub.RoleViewer, s.latestMeasurepoints)
	s.api("GET", dev+"/telemetry", iothub.RoleViewer, s.deviceData("samples", recent(s, iothub.Store.RecentSamples)))
	s.api("GET", dev+"/events", iothub.RoleViewer, s.deviceData("events", recent(s, iothub.Store.RecentEvents)))
	s.api("GET", dev+"/attributes", iothub.RoleViewer, s.deviceData("attributes", all(s, iothub.Store.Attributes)))
	s.api("GET", dev+"/tags", iothub.RoleViewer, s.deviceData("tags", all(s, iothub.Store.Tags)))
}

// device loads {pk}/{dk} for p: 404 when absent or in another org.
func (s *Server) device(ctx context.Context, p iothub.Principal, r *http.Request) (*iothub.Device, error) {
	pk, dk := r.PathValue("pk"), r.PathValue("dk")
	d, err := s.Store.Device(ctx, pk, dk)
	if err == nil && !p.CanSee(d.OrgID) {
		err = iothub.Errorf(iothub.ENOTFOUND, "device %q not found in product %q", dk, pk)
	}
	return d, err
}

// publicDevice is a device as shown by the API: the secret only at
// creation and reset.
func publicDevice(d *iothub.Device) *iothub.Device {
	c := *d
	c.DeviceSecret = ""
	return &c
}

func (s *Server) createDevice(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	prod, err := s.product(r.Context(), p, r.PathValue("pk"))
	if err != nil {
		return err
	}
	var req struct {
		DeviceKey string `json:"deviceKey"`
		Name      string `json:"name"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	d, err := iothub.CreateDevice(r.Context(), s.Store, prod, req.DeviceKey, req.Name, s.Now())
	if err != nil {
		return err
	}
	s.audit(r.Context(), iothub.AuditEvent{OrgID: d.OrgID, Kind: "device.created", ProductKey: d.ProductKey, DeviceKey: d.DeviceKey, Remote: remoteIP(r)})
	writeJSON(w, http.StatusCreated, d)
	return nil
}

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	prod, err := s.product(r.Context(), p, r.PathValue("pk"))
	if err != nil {
		return err
	}
	q := r.URL.Query()
	f := iothub.DeviceFilter{State: iothub.DeviceState(q.Get("state")), Cursor: q.Get("cursor")}
	if f.State != "" && !f.State.Valid() {
		return iothub.Errorf(iothub.EINVALID, "state must be inactive, online, offline or disabled")
	}
	if f.Limit, err = queryInt(r, "limit", 100, 1000); err != nil {
		return err
	}
	devs, err := s.Store.Devices(r.Context(), prod.ProductKey, f)
	if err != nil {
		return err
	}
	out := make([]*iothub.Device, len(devs))
	for i, d := range devs {
		out[i] = publicDevice(d)
	}
	body := map[string]any{"devices": out}
	if len(devs) == f.Limit {
		body["nextCursor"] = devs[len(devs)-1].DeviceKey
	}
	writeJSON(w, http.StatusOK, body)
	return nil
}

func queryInt(r *http.Request, name string, def, max int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		return 0, iothub.Errorf(iothub.EINVALID, "%s must be an integer from 1 to %d", name, max)
	}
	return n, nil
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	d, err := s.device(r.Context(), p, r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, publicDevice(d))
	return nil
}

// changeDevice applies a lifecycle change, audits it and tells live sessions.
func (s *Server) changeDevice(r *http.Request, d *iothub.Device, kind string, change func(context.Context) error) error {
	if err := change(r.Context()); err != nil {
		return err
	}
	s.audit(r.Context(), iothub.AuditEvent{OrgID: d.OrgID, Kind: kind, ProductKey: d.ProductKey, DeviceKey: d.DeviceKey, Remote: remoteIP(r)})
	s.publish(r.Context(), iothub.Event{Kind: iothub.EventDeviceChanged, ProductKey: d.ProductKey, DeviceKey: d.DeviceKey, Reason: kind})
	return nil
}

func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	d, err := s.device(r.Context(), p, r)
	if err != nil {
		return err
	}
	err = s.changeDevice(r, d, "device.deleted", func(ctx context.Context) error {
		return s.Store.DeleteDevice(ctx, d.ProductKey, d.DeviceKey)
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) disableDevice(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	d, err := s.device(r.Context(), p, r)
	if err != nil {
		return err
	}
	err = s.changeDevice(r, d, "device.disabled", func(ctx context.Context) error {
		return s.Store.SetDeviceState(ctx, d.ProductKey, d.DeviceKey, iothub.StateDisabled, s.Now())
	})
	if err != nil {
		return err
	}
	d.State = iothub.StateDisabled
	writeJSON(w, http.StatusOK, publicDevice(d))
	return nil
}

// enableDevice brings a disabled device back: offline, or inactive if it
// never logged in. Enabling an enabled device changes nothing.
func (s *Server) enableDevice(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	d, err := s.device(r.Context(), p, r)
	if err != nil {
		return err
	}
	if d.State != iothub.StateDisabled {
		writeJSON(w, http.StatusOK, publicDevice(d))
		return nil
	}
	err = s.changeDevice(r, d, "device.enabled", func(ctx context.Context) (err error) {
		d.State, err = s.Store.EnableDevice(ctx, d.ProductKey, d.DeviceKey)
		return err
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, publicDevice(d))
	return nil
}

func (s *Server) resetDevice(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	d, err := s.device(r.Context(), p, r)
	if err != nil {
		return err
	}
	var reset *iothub.Device
	err = s.changeDevice(r, d, "device.reset", func(ctx context.Context) (err error) {
		reset, err = s.Store.ResetDevice(ctx, d.ProductKey, d.DeviceKey, iothub.RandomString(iothub.SecretLen))
		return err
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, reset)
	return nil
}

// callRequest is the body of a downstream request.
type callRequest struct {
	Params    json.RawMessage `json:"params"`
	TimeoutMs int             `json:"timeoutMs"`
}

// call forwards a downstream request to the device and writes its reply.
func (s *Server) call(w http.ResponseWriter, r *http.Request, p iothub.Principal, topic, method string) error {
	d, err := s.device(r.Context(), p, r)
	if err != nil {
		return err
	}
	var req callRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if len(req.Params) == 0 {
		req.Params = json.RawMessage("{}")
	}
	timeout := time.Duration(req.TimeoutMs) * time.Millisecond
	if req.TimeoutMs <= 0 {
		timeout = 10 * time.Second
	}
	if timeout > 60*time.Second {
		return iothub.Errorf(iothub.EINVALID, "timeoutMs must be at most 60000")
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	reply, err := s.Gateway.Call(ctx, d.ProductKey, d.DeviceKey, topic, method, req.Params)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, reply)
	return nil
}

func (s *Server) invokeService(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	id := r.PathValue("serviceId")
	if err := iothub.ValidateKey("serviceId", id); err != nil {
		return err
	}
	return s.call(w, r, p, "thing/service/"+id, "thing.service."+id)
}

func (s *Server) setMeasurepoints(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	return s.call(w, r, p, "thing/service/measurepoint/set", "thing.service.measurepoint.set")
}

func (s *Server) latestMeasurepoints(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	d, err := s.device(r.Context(), p, r)
	if err != nil {
		return err
	}
	points, err := s.Store.LatestPoints(r.Context(), d.ProductKey, d.DeviceKey)
	if err != nil {
		return err
	}
	values := make(map[string]json.RawMessage, len(points))
	for _, pt := range points {
		values[pt.Name] = pt.Value
	}
	writeJSON(w, http.StatusOK, map[string]any{"measurepoints": values, "points": points})
	return nil
}

// deviceData answers a read of one device's data as {key: read(…)}.
func (s *Server) deviceData(key string, read func(r *http.Request, d *iothub.Device) (any, error)) func(http.ResponseWriter, *http.Request, iothub.Principal) error {
	return func(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
		d, err := s.device(r.Context(), p, r)
		if err != nil {
			return err
		}
		v, err := read(r, d)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, map[string]any{key: v})
		return nil
	}
}

// recent reads a device's newest posts with the request's ?limit.
func recent[T any](s *Server, list func(iothub.Store, context.Context, string, string, int) ([]T, error)) func(*http.Request, *iothub.Device) (any, error) {
	return func(r *http.Request, d *iothub.Device) (any, error) {
		limit, err := queryInt(r, "limit", 100, 1000)
		if err != nil {
			return nil, err
		}
		return list(s.Store, r.Context(), d.ProductKey, d.DeviceKey, limit)
	}
}

// all reads one of a device's name/value sets.
func all[T any](s *Server, read func(iothub.Store, context.Context, string, string) (T, error)) func(*http.Request, *iothub.Device) (any, error) {
	return func(r *http.Request, d *iothub.Device) (any, error) {
		return read(s.Store, r.Context(), d.ProductKey, d.DeviceKey)
	}
}
