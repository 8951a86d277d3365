package iothub

import "testing"

func TestOTAJobStatus(t *testing.T) {
	job := func(states ...OTAStatus) *OTAJob {
		j := &OTAJob{}
		for _, s := range states {
			j.Devices = append(j.Devices, OTADevice{Status: s})
		}
		return j
	}
	for _, c := range []struct {
		j    *OTAJob
		want string
	}{
		{job(OTADone, OTAUpgrading), "running"},
		{job(OTADone, OTAPending, OTAFailed), "running"},
		{job(OTADone, OTADone), "done"},
		{job(OTADone, OTASuperseded), "done"},
		{job(OTADone, OTAFailed), "failed"},
		{job(OTASuperseded, OTASuperseded), "superseded"},
	} {
		if got := c.j.Status(); got != c.want {
			t.Errorf("%+v: %s, want %s", c.j.Devices, got, c.want)
		}
	}
}
