package http

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/sign"
)

func (s *Server) registerOTA() {
	const prod = "/api/v1/products/{pk}"
	s.api("POST", prod+"/firmwares", iothub.RoleOperator, s.uploadFirmware)
	s.api("GET", prod+"/firmwares", iothub.RoleViewer, s.listFirmwares)
	s.api("POST", prod+"/ota/jobs", iothub.RoleOperator, s.createOTAJob)
	s.api("GET", prod+"/ota/jobs/{jobId}", iothub.RoleViewer, s.getOTAJob)
	s.handle("GET", "/device/v1/{pk}/{dk}/firmwares/{firmwareId}", s.downloadFirmware)
}

// uploadFirmware stores the request body as firmware
// ?version=…[&sha256=…] of the product.
func (s *Server) uploadFirmware(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	prod, err := s.product(r.Context(), p, r.PathValue("pk"))
	if err != nil {
		return err
	}
	content, err := readBytes(r, iothub.MaxFirmwareBytes, "firmware")
	if err != nil {
		return err
	}
	q := r.URL.Query()
	f, err := s.Manage.UploadFirmware(r.Context(), actor(r, p), prod, q.Get("version"), q.Get("sha256"), content)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, f)
	return nil
}

func (s *Server) listFirmwares(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	prod, err := s.product(r.Context(), p, r.PathValue("pk"))
	if err != nil {
		return err
	}
	list, err := s.Store.Firmwares(r.Context(), prod.ProductKey)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"firmwares": list})
	return nil
}

// otaJobView is a job as the API shows it, with its summed-up status.
type otaJobView struct {
	*iothub.OTAJob
	Status string `json:"status"`
}

// createOTAJob starts an upgrade job {"firmwareId", "deviceKeys"} (no
// deviceKeys: every device of the product) and pushes ota.device.upgrade
// to the devices that are online.
func (s *Server) createOTAJob(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	prod, err := s.product(r.Context(), p, r.PathValue("pk"))
	if err != nil {
		return err
	}
	var req struct {
		FirmwareID string   `json:"firmwareId"`
		DeviceKeys []string `json:"deviceKeys"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	j, err := s.Manage.CreateOTAJob(r.Context(), actor(r, p), prod, req.FirmwareID, req.DeviceKeys)
	if err != nil {
		return err
	}
	go s.pushUpgrades(j)
	writeJSON(w, http.StatusCreated, otaJobView{j, j.Status()})
	return nil
}

// pushConcurrency bounds the upgrade commands a job has in flight.
const pushConcurrency = 16

// pushUpgrades sends ota.device.upgrade to each device of j that is
// online, a few at a time; a device that accepts is notified. A device
// offline now gets the offer when it asks (ota.device.request).
func (s *Server) pushUpgrades(j *iothub.OTAJob) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	f, err := s.Store.Firmware(ctx, j.ProductKey, j.FirmwareID)
	if err != nil {
		s.Logger.Warn("ota: push failed", "job", j.ID, "err", err)
		return
	}
	slots := make(chan struct{}, pushConcurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, d := range j.Devices {
		dev := iothub.DeviceID{ProductKey: j.ProductKey, DeviceKey: d.DeviceKey}
		params, err := json.Marshal(s.Manage.UpgradeFor(f, dev))
		if err != nil {
			return
		}
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			reply, err := s.Gateway.Call(callCtx, dev.ProductKey, dev.DeviceKey, "ota/device/upgrade", "ota.device.upgrade", params)
			if err != nil || reply.Code != 200 {
				return
			}
			if err := s.Manage.OTAAccepted(ctx, j.ID, dev); err != nil {
				s.Logger.Warn("ota: recording an accepted upgrade failed", "job", j.ID, "deviceKey", dev.DeviceKey, "err", err)
			}
		}()
	}
}

func (s *Server) getOTAJob(w http.ResponseWriter, r *http.Request, p iothub.Principal) error {
	prod, err := s.product(r.Context(), p, r.PathValue("pk"))
	if err != nil {
		return err
	}
	j, err := s.Store.OTAJob(r.Context(), prod.ProductKey, r.PathValue("jobId"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, otaJobView{j, j.Status()})
	return nil
}

// downloadFirmware serves the firmware of the device's upgrade under way,
// with HTTP Range for resuming. The device signs firmwareId (plus its
// keys and the timestamp) with its secret, in the query: ?timestamp=…
// &signMethod=sha256&sign=…; each signed request is good once.
func (s *Server) downloadFirmware(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	firmwareID := r.PathValue("firmwareId")
	d, err := s.authenticateDevice(r, deviceSigned{Timestamp: json.RawMessage(q.Get("timestamp")), SignMethod: q.Get("signMethod"), Sign: q.Get("sign")},
		sign.Pair{Key: "firmwareId", Value: firmwareID})
	var f *iothub.Firmware
	var content []byte
	if err == nil {
		f, content, err = s.Manage.FirmwareDownload(r.Context(), iothub.DeviceID{ProductKey: d.ProductKey, DeviceKey: d.DeviceKey}, firmwareID)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"`+f.SHA256+`"`)
	w.Header().Set("X-Firmware-Sha256", f.SHA256)
	http.ServeContent(w, r, "", f.CreatedAt, bytes.NewReader(content))
}

// readBytes reads a binary request body of at most limit bytes.
func readBytes(r *http.Request, limit int, what string) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, int64(limit)))
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return nil, iothub.Errorf(iothub.ETOOLARGE, "%s larger than %d bytes", what, limit)
	} else if err != nil {
		return nil, iothub.Errorf(iothub.EINVALID, "reading the %s: %v", what, err)
	}
	return b, nil
}
