package iothub

import (
	"context"
	"time"
)

// MaxFirmwareBytes caps one firmware file. Firmware is kept in the
// database, which every node of a cluster shares, and served from memory.
const MaxFirmwareBytes = 32 << 20

// MaxOTAJobDevices caps the devices of one upgrade job.
const MaxOTAJobDevices = 10000

// Firmware is a file a product's devices can be upgraded to. The hub
// computes SHA256 at upload and checks it again before every download.
type Firmware struct {
	ID         string    `json:"firmwareId"`
	OrgID      string    `json:"orgId"`
	ProductKey string    `json:"productKey"`
	Version    string    `json:"version"`
	Size       int64     `json:"fileSize"`
	SHA256     string    `json:"sha256"`
	CreatedAt  time.Time `json:"createdAt"`
}

// OTAStatus is where one device stands in an upgrade job.
type OTAStatus string

// A device's upgrade goes pending → notified (it accepted
// ota.device.upgrade or asked for it) → upgrading (it reported progress) →
// done (it informed the new version) or failed (a negative progress step);
// superseded when a newer job for the device replaced it.
const (
	OTAPending    OTAStatus = "pending"
	OTANotified   OTAStatus = "notified"
	OTAUpgrading  OTAStatus = "upgrading"
	OTADone       OTAStatus = "done"
	OTAFailed     OTAStatus = "failed"
	OTASuperseded OTAStatus = "superseded"
)

// Finished reports whether the status is final.
func (s OTAStatus) Finished() bool {
	return s == OTADone || s == OTAFailed || s == OTASuperseded
}

// OTADevice is one device's state in an upgrade job.
type OTADevice struct {
	DeviceKey string    `json:"deviceKey"`
	Status    OTAStatus `json:"status"`
	Step      int       `json:"step"`
	Desc      string    `json:"desc,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// OTAJob upgrades devices of a product to one firmware.
type OTAJob struct {
	ID         string      `json:"jobId"`
	OrgID      string      `json:"orgId"`
	ProductKey string      `json:"productKey"`
	FirmwareID string      `json:"firmwareId"`
	Version    string      `json:"version"`
	CreatedAt  time.Time   `json:"createdAt"`
	Devices    []OTADevice `json:"devices"`
}

// Status sums up the job: "running" while a device is unfinished, then
// "done" if every device that was not superseded is done, "failed" if
// one failed, "superseded" if newer jobs took over all its devices.
func (j *OTAJob) Status() string {
	status := "superseded"
	for _, d := range j.Devices {
		switch {
		case !d.Status.Finished():
			return "running"
		case d.Status == OTAFailed:
			status = "failed"
		case d.Status == OTADone && status == "superseded":
			status = "done"
		}
	}
	return status
}

// OTAStore keeps firmware files and upgrade jobs.
type OTAStore interface {
	// CreateFirmware stores f and its content; ECONFLICT if the product
	// has that version already.
	CreateFirmware(ctx context.Context, f *Firmware, content []byte) error
	// Firmware returns a product's firmware without its content, or ENOTFOUND.
	Firmware(ctx context.Context, productKey, id string) (*Firmware, error)
	Firmwares(ctx context.Context, productKey string) ([]*Firmware, error)
	// FirmwareContent returns the file, or ENOTFOUND.
	FirmwareContent(ctx context.Context, productKey, id string) ([]byte, error)
	// CreateOTAJob stores a job with its devices, all pending; an
	// unfinished entry of an earlier job for one of them is superseded.
	// Every device must exist (ENOTFOUND).
	CreateOTAJob(ctx context.Context, j *OTAJob) error
	// OTAJob returns a product's job with every device's state, or ENOTFOUND.
	OTAJob(ctx context.Context, productKey, id string) (*OTAJob, error)
	// PendingOTA returns the device's unfinished job, its Devices holding
	// only this device, or ENOTFOUND.
	PendingOTA(ctx context.Context, dev DeviceID) (*OTAJob, error)
	// UpdateOTADevice records a device's new state in a job; ENOTFOUND if
	// the device has no unfinished entry in it (for OTANotified: no
	// pending one, so a late acceptance never undoes progress).
	UpdateOTADevice(ctx context.Context, jobID string, dev DeviceID, d OTADevice) error
}
