package http

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/iothub/iothub"
)

func (s *Server) registerThingModel() {
	const model = "/api/v1/products/{pk}/thingmodel"
	s.api("GET", model, iothub.RoleViewer, s.getThingModel)
	s.api("PUT", model, iothub.RoleOperator, s.setThingModel)
	s.api("DELETE", model, iothub.RoleOperator, s.deleteThingModel)
	const raw = "/api/v1/products/{pk}/devices/{dk}/raw"
	s.api("GET", raw, iothub.RoleViewer, s.listRaw)
	s.api("POST", raw, iothub.RoleOperator, s.sendRaw)
}

func (s *Server) getThingModel(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	prod, err := s.product(r.Context(), p, r.PathValue("pk"))
	if err != nil {
		return err
	}
	model, err := s.Store.ThingModel(r.Context(), prod.ProductKey)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(model)
	return nil
}

// setThingModel replaces the product's thing model with the body
// {measurepoints, events, services}.
func (s *Server) setThingModel(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	prod, err := s.product(r.Context(), p, r.PathValue("pk"))
	if err != nil {
		return err
	}
	var model json.RawMessage
	if err := decode(r, &model); err != nil {
		return err
	}
	if string(model) == "null" {
		return iothub.Errorf(iothub.EINVALID, "the thing model must be an object (DELETE removes it)")
	}
	if err := s.Manage.SetThingModel(r.Context(), actor(r, p), prod, model); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) deleteThingModel(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	prod, err := s.product(r.Context(), p, r.PathValue("pk"))
	if err != nil {
		return err
	}
	if err := s.Manage.SetThingModel(r.Context(), actor(r, p), prod, nil); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// listRaw returns the device's latest up_raw payloads, newest first
// (?limit=, at most iothub.RawPerDevice), base64 in JSON.
func (s *Server) listRaw(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	d, err := s.device(r.Context(), p, r)
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", 0, math.MaxInt32) // the store caps it at iothub.RawPerDevice
	if err != nil {
		return err
	}
	msgs, err := s.Store.RecentRaw(r.Context(), iothub.DeviceID{ProductKey: d.ProductKey, DeviceKey: d.DeviceKey}, limit)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"messages": msgs})
	return nil
}

// sendRaw writes the request body raw on the device's thing/model/down_raw
// and answers its down_raw_reply: {"payload": base64}. ?timeoutMs= as for
// service calls.
func (s *Server) sendRaw(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	d, err := s.device(r.Context(), p, r)
	if err != nil {
		return err
	}
	payload, err := readBytes(r, iothub.MaxRawBytes, "raw payload")
	if err != nil {
		return err
	}
	timeout := 10 * time.Second
	if v := r.URL.Query().Get("timeoutMs"); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms <= 0 || ms > 60000 {
			return iothub.Errorf(iothub.EINVALID, "timeoutMs must be 1 to 60000")
		}
		timeout = time.Duration(ms) * time.Millisecond
	}
	params, _ := json.Marshal(payload) // base64 string: cannot fail
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	reply, err := s.Gateway.Call(ctx, d.ProductKey, d.DeviceKey, "thing/model/down_raw", "thing.model.down_raw", params)
	if err != nil {
		return err
	}
	var out []byte
	if reply.Code == 200 {
		_ = json.Unmarshal(reply.Data, &out)
	}
	writeJSON(w, http.StatusOK, map[string]any{"code": reply.Code, "message": reply.Message, "payload": out})
	return nil
}
