package mqtt

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/manage"
)

// otaHandler routes the OTA topics (relative to /sys/{pk}/{dk}/).
func otaHandler(rel string) (handlerFn, bool) {
	switch rel {
	case "ota/device/getversion", "ota/device/request":
		return (*Server).otaOffer, true
	case "ota/device/progress":
		return (*Server).otaProgress, true
	case "ota/device/inform":
		return (*Server).otaInform, true
	}
	return nil, false
}

// otaCode turns an OTA rule's error into a reply code.
func otaCode(err error) (int, string) {
	if iothub.ErrorCode(err) == iothub.ENOTFOUND {
		return codeNotFound, "no upgrade is under way for this device"
	}
	return storeCode(err)
}

// otaOffer answers getversion and request with the firmware waiting for
// the device: a list of at most one offer (empty when there is none).
func (s *Server) otaOffer(ctx context.Context, ss *session, _ json.RawMessage) (any, int, string) {
	u, err := s.cfg.Manage.OTAOffer(ctx, ss.dev)
	if err != nil {
		code, msg := otaCode(err)
		return nil, code, msg
	}
	offers := []manage.Upgrade{}
	if u != nil {
		offers = append(offers, *u)
	}
	return offers, codeOK, ""
}

// otaProgress records {step, desc}; the SDKs send step as a string.
func (s *Server) otaProgress(ctx context.Context, ss *session, params json.RawMessage) (any, int, string) {
	var p struct {
		Step json.RawMessage `json:"step"`
		Desc string          `json:"desc"`
	}
	if json.Unmarshal(params, &p) != nil {
		return nil, codeBadFormat, "params must be {step, desc}"
	}
	step, err := strconv.Atoi(strings.Trim(string(p.Step), `"`))
	if err != nil {
		return nil, codeBadFormat, "step must be an integer"
	}
	if err := s.cfg.Manage.OTAProgress(ctx, ss.dev, step, p.Desc); err != nil {
		code, msg := otaCode(err)
		return nil, code, msg
	}
	return nil, codeOK, ""
}

// otaInform records the version the device runs.
func (s *Server) otaInform(ctx context.Context, ss *session, params json.RawMessage) (any, int, string) {
	var p struct {
		Version string `json:"version"`
	}
	if json.Unmarshal(params, &p) != nil {
		return nil, codeBadFormat, "params must be {version}"
	}
	if err := s.cfg.Manage.OTAInform(ctx, ss.dev, p.Version); err != nil {
		code, msg := otaCode(err)
		return nil, code, msg
	}
	return nil, codeOK, ""
}
