package manage

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"

	"github.com/iothub/iothub"
)

// Upgrade is the firmware offer a device receives: the params of
// ota.device.upgrade and each entry of ota.device.getversion's answer.
// Sign is the file's SHA-256, which the device checks after download.
type Upgrade struct {
	Version    string `json:"version"`
	SignMethod string `json:"signMethod"`
	Sign       string `json:"sign"`
	FileURL    string `json:"fileUrl"`
	FileSize   int64  `json:"fileSize"`
}

// UploadFirmware stores a firmware file for p's devices. wantSHA256, if
// set, must be the file's hex SHA-256 (a transfer check); the hub computes
// the digest either way and checks it before every download.
func (s *Service) UploadFirmware(ctx context.Context, a Actor, p *iothub.Product, version, wantSHA256 string, content []byte) (*iothub.Firmware, error) {
	if err := iothub.ValidateKey("version", version); err != nil {
		return nil, err
	}
	if len(content) == 0 {
		return nil, iothub.Errorf(iothub.EINVALID, "the firmware file is empty")
	}
	if len(content) > iothub.MaxFirmwareBytes {
		return nil, iothub.Errorf(iothub.ETOOLARGE, "firmware is larger than %d bytes", iothub.MaxFirmwareBytes)
	}
	sum := sha256.Sum256(content)
	digest := hex.EncodeToString(sum[:])
	if wantSHA256 != "" && subtle.ConstantTimeCompare([]byte(strings.ToLower(wantSHA256)), []byte(digest)) != 1 {
		return nil, iothub.Errorf(iothub.EINVALID, "sha256 does not match the uploaded file")
	}
	f := &iothub.Firmware{ID: "fw" + iothub.RandomString(16), OrgID: p.OrgID, ProductKey: p.ProductKey, Version: version,
		Size: int64(len(content)), SHA256: digest, CreatedAt: s.now()}
	if err := s.cfg.Store.CreateFirmware(ctx, f, content); err != nil {
		return nil, err
	}
	s.audit(ctx, a, iothub.AuditEvent{OrgID: p.OrgID, Kind: "firmware.uploaded", ProductKey: p.ProductKey,
		Reason: fmt.Sprintf("version %s sha256 %s", version, digest)})
	return f, nil
}

// CreateOTAJob starts upgrading p's devices (all of them when deviceKeys
// is empty) to a firmware of p. The caller pushes ota.device.upgrade to
// the devices online; the others get the offer when they ask.
func (s *Service) CreateOTAJob(ctx context.Context, a Actor, p *iothub.Product, firmwareID string, deviceKeys []string) (*iothub.OTAJob, error) {
	f, err := s.cfg.Store.Firmware(ctx, p.ProductKey, firmwareID)
	if err != nil {
		return nil, err
	}
	if len(deviceKeys) == 0 {
		if deviceKeys, err = s.allDeviceKeys(ctx, p.ProductKey); err != nil {
			return nil, err
		}
	}
	switch {
	case len(deviceKeys) == 0:
		return nil, iothub.Errorf(iothub.EINVALID, "product %s has no devices", p.ProductKey)
	case len(deviceKeys) > iothub.MaxOTAJobDevices:
		return nil, iothub.Errorf(iothub.ETOOLARGE, "a job may upgrade at most %d devices", iothub.MaxOTAJobDevices)
	}
	j := &iothub.OTAJob{ID: "ota" + iothub.RandomString(16), OrgID: p.OrgID, ProductKey: p.ProductKey, FirmwareID: f.ID,
		Version: f.Version, CreatedAt: s.now()}
	for _, dk := range deviceKeys {
		j.Devices = append(j.Devices, iothub.OTADevice{DeviceKey: dk, Status: iothub.OTAPending, UpdatedAt: j.CreatedAt})
	}
	if err := s.cfg.Store.CreateOTAJob(ctx, j); err != nil {
		return nil, err
	}
	s.audit(ctx, a, iothub.AuditEvent{OrgID: p.OrgID, Kind: "ota.job_created", ProductKey: p.ProductKey,
		Reason: fmt.Sprintf("job %s version %s, %d devices", j.ID, f.Version, len(deviceKeys))})
	return j, nil
}

// allDeviceKeys lists every device of a product, page by page.
func (s *Service) allDeviceKeys(ctx context.Context, productKey string) ([]string, error) {
	var keys []string
	cursor := ""
	for len(keys) <= iothub.MaxOTAJobDevices {
		page, err := s.cfg.Store.Devices(ctx, productKey, iothub.DeviceFilter{Limit: 1000, Cursor: cursor})
		if err != nil {
			return nil, err
		}
		for _, d := range page {
			keys = append(keys, d.DeviceKey)
		}
		if len(page) < 1000 {
			break
		}
		cursor = page[len(page)-1].DeviceKey
	}
	return keys, nil
}

// UpgradeFor is the offer of firmware f to device dev, its URL on the
// device API.
func (s *Service) UpgradeFor(f *iothub.Firmware, dev iothub.DeviceID) Upgrade {
	u := strings.TrimRight(s.cfg.DeviceURL, "/") + "/device/v1/" + url.PathEscape(dev.ProductKey) + "/" +
		url.PathEscape(dev.DeviceKey) + "/firmwares/" + url.PathEscape(f.ID)
	return Upgrade{Version: f.Version, SignMethod: "sha256", Sign: f.SHA256, FileURL: u, FileSize: f.Size}
}

// OTAOffer is the upgrade waiting for dev, or nil when there is none;
// asking for it (ota.device.request, getversion) or accepting the pushed
// command counts as notified.
func (s *Service) OTAOffer(ctx context.Context, dev iothub.DeviceID) (*Upgrade, error) {
	j, err := s.cfg.Store.PendingOTA(ctx, dev)
	if iothub.ErrorCode(err) == iothub.ENOTFOUND {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	f, err := s.cfg.Store.Firmware(ctx, dev.ProductKey, j.FirmwareID)
	if err != nil {
		return nil, err
	}
	if len(j.Devices) == 1 && j.Devices[0].Status == iothub.OTAPending {
		err := s.cfg.Store.UpdateOTADevice(ctx, j.ID, dev, iothub.OTADevice{Status: iothub.OTANotified, UpdatedAt: s.now()})
		if err != nil && iothub.ErrorCode(err) != iothub.ENOTFOUND { // not found: it moved on meanwhile
			return nil, err
		}
	}
	u := s.UpgradeFor(f, dev)
	return &u, nil
}

// OTAAccepted records that dev accepted job's upgrade command, unless
// the device has moved on already (reported progress, finished, or a
// newer job took it over).
func (s *Service) OTAAccepted(ctx context.Context, jobID string, dev iothub.DeviceID) error {
	j, err := s.cfg.Store.PendingOTA(ctx, dev)
	if iothub.ErrorCode(err) == iothub.ENOTFOUND {
		return nil
	}
	if err != nil || j.ID != jobID || j.Devices[0].Status != iothub.OTAPending {
		return err
	}
	err = s.cfg.Store.UpdateOTADevice(ctx, jobID, dev, iothub.OTADevice{Status: iothub.OTANotified, UpdatedAt: s.now()})
	if iothub.ErrorCode(err) == iothub.ENOTFOUND {
		return nil
	}
	return err
}

// OTAProgress records dev's progress in its unfinished job: a step of 0
// to 100 is percent done, a negative step a failure (desc says why).
// ENOTFOUND when the device has no upgrade under way.
func (s *Service) OTAProgress(ctx context.Context, dev iothub.DeviceID, step int, desc string) error {
	if step > 100 || step < -100 {
		return iothub.Errorf(iothub.EINVALID, "step must be a percentage or a negative failure code")
	}
	if len(desc) > 256 {
		desc = desc[:256]
	}
	j, err := s.cfg.Store.PendingOTA(ctx, dev)
	if err != nil {
		return err
	}
	d := iothub.OTADevice{Status: iothub.OTAUpgrading, Step: step, Desc: desc, UpdatedAt: s.now()}
	if step < 0 {
		d.Status = iothub.OTAFailed
	}
	return s.cfg.Store.UpdateOTADevice(ctx, j.ID, dev, d)
}

// OTAInform records the version dev now runs: the job upgrading it to
// that version is done for it. Another version changes nothing.
func (s *Service) OTAInform(ctx context.Context, dev iothub.DeviceID, version string) error {
	if err := iothub.ValidateKey("version", version); err != nil {
		return err
	}
	j, err := s.cfg.Store.PendingOTA(ctx, dev)
	if iothub.ErrorCode(err) == iothub.ENOTFOUND {
		return nil
	} else if err != nil {
		return err
	}
	if j.Version != version {
		s.log.Info("manage: device informs a version other than its upgrade's", "productKey", dev.ProductKey, "deviceKey", dev.DeviceKey, "version", version, "want", j.Version)
		return nil
	}
	return s.cfg.Store.UpdateOTADevice(ctx, j.ID, dev, iothub.OTADevice{Status: iothub.OTADone, Step: 100, UpdatedAt: s.now()})
}

// FirmwareDownload returns the firmware dev may download: that of its
// upgrade under way, and only that. The file's digest is checked against
// the one computed at upload, so a file damaged at rest is never served.
func (s *Service) FirmwareDownload(ctx context.Context, dev iothub.DeviceID, firmwareID string) (*iothub.Firmware, []byte, error) {
	j, err := s.cfg.Store.PendingOTA(ctx, dev)
	if iothub.ErrorCode(err) == iothub.ENOTFOUND || (err == nil && j.FirmwareID != firmwareID) {
		return nil, nil, iothub.Errorf(iothub.ENOTFOUND, "no upgrade to firmware %s is under way for this device", firmwareID)
	} else if err != nil {
		return nil, nil, err
	}
	f, err := s.cfg.Store.Firmware(ctx, dev.ProductKey, firmwareID)
	if err != nil {
		return nil, nil, err
	}
	content, err := s.cfg.Store.FirmwareContent(ctx, dev.ProductKey, firmwareID)
	if err != nil {
		return nil, nil, err
	}
	sum := sha256.Sum256(content)
	if hex.EncodeToString(sum[:]) != f.SHA256 {
		s.log.Error("manage: stored firmware does not match its digest", "firmwareId", f.ID, "productKey", f.ProductKey)
		return nil, nil, iothub.Errorf(iothub.EINTERNAL, "stored firmware is damaged")
	}
	return f, content, nil
}
