package e2e

// The fault suite of "acknowledged means stored": a load of numbered QoS 1
// posts runs while a fault is injected (kill -9 of the hub, a poisoned
// post, a full disk, a PostgreSQL restart), and every post the hub
// acknowledged, by PUBACK or by a 200 reply, must be found stored
// afterwards. IOTHUB_FAULT_TRIALS raises the number of kill -9 trials.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iothub/iothub/client"
	"github.com/iothub/iothub/hub"
	"github.com/iothub/iothub/postgres/pgtest"
	"github.com/iothub/iothub/sign"
)

// Kill -9 under a QoS 1 load, restart on the same data directory: every
// acknowledged post is stored.
func TestFaultKillDashNineLosesNoAcknowledgedPost(t *testing.T) {
	bin, dir := buildCLI(t), t.TempDir()
	p := startBinary(t, bin, dir)
	devices := loadDevices(t, binaryHub(t, p, dir).admin, 50)
	for trial := 1; trial <= faultTrials(t, 3); trial++ {
		run := startLoad(devices, "tcp://"+p.mqttAddr, 50*time.Millisecond) // 50 devices × 20 posts/s
		time.Sleep(1500 * time.Millisecond)
		p.kill()
		run.end(t)
		p = startBinary(t, bin, dir)
		tally := tallyStored(t, binaryHub(t, p, dir).admin, devices)
		t.Logf("trial %d: %s", trial, tally)
		if tally.missing != 0 {
			t.Fatalf("trial %d: %d acknowledged posts lost to kill -9", trial, tally.missing)
		}
		if tally.acked == 0 {
			t.Fatalf("trial %d: nothing was acknowledged: the load did not run", trial)
		}
	}
}

// One device posting what the store refuses is answered with an error;
// the 20 healthy devices posting in the same batches lose nothing.
func TestFaultPoisonedPostHurtsOnlyItsSender(t *testing.T) {
	th := startHub(t, "")
	devices := loadDevices(t, th.admin, 21)
	poisoner, healthy := devices[0], devices[1:]
	bad := []string{
		`{"measurepoints":{"":1}}`,
		`{"measurepoints":{"x":NaN}}`,
		`{"measurepoints":[1,2]}`,
		`{"measurepoints":{"` + strings.Repeat("n", 200) + `":1}}`,
	}
	poisoner.poison = func(n int) string {
		return `{"id":"` + strconv.Itoa(n) + `","version":"1.0","method":"thing.measurepoint.post","params":` + bad[n%len(bad)] + `}`
	}
	run := startLoad(devices, "tcp://"+th.MQTTAddr(), 20*time.Millisecond)
	time.Sleep(2 * time.Second)
	run.end(t)
	tally := tallyStored(t, th.admin, healthy)
	t.Logf("healthy devices: %s", tally)
	if tally.missing != 0 || tally.refused != 0 {
		t.Fatalf("healthy devices: %d acknowledged posts missing, %d refused", tally.missing, tally.refused)
	}
	if tally.acked < tally.posted*9/10 {
		t.Fatalf("healthy devices: only %d of %d posts acknowledged", tally.acked, tally.posted)
	}
	// The NaN post is not JSON at all: its error reply cannot name its id.
	stored := storedPosts(t, th.admin, poisoner)
	if len(stored) != 0 || len(poisoner.ok) != 0 || len(poisoner.refused)+poisoner.unnamed != poisoner.next-1 {
		t.Fatalf("poisoner: %d posts, %d stored, %d answered 200, %d refused, %d refused without id; want every post refused with an error, none stored",
			poisoner.next-1, len(stored), len(poisoner.ok), len(poisoner.refused), poisoner.unnamed)
	}
	for n, code := range poisoner.refused {
		if code != 1220 {
			t.Fatalf("poisoned post %d answered %d, want 1220", n, code)
		}
	}
}

// The data directory on a small tmpfs that fills up during the load: posts
// are refused (not acknowledged) while the disk is full, storing resumes
// by itself once space is freed, and no acknowledged post is missing.
func TestFaultFullDiskRefusesAndResumes(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=48m"); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v): the full-disk fault needs mount permission", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	th := startHub(t, filepath.Join(dir, "data"))
	devices := loadDevices(t, th.admin, 20)
	run := startLoad(devices, "tcp://"+th.MQTTAddr(), 20*time.Millisecond)
	time.Sleep(500 * time.Millisecond)
	filler := filepath.Join(dir, "filler")
	fillDisk(t, filler)
	time.Sleep(500 * time.Millisecond)
	// An MQTT 5 client is told why in its PUBACK: 0x80 (128), not stored.
	if out := mqtt5Post(t, th.MQTTAddr(), devices[0]); !strings.Contains(out, "received PUBACK") || !strings.Contains(out, "RC:128") {
		t.Errorf("MQTT 5 post on a full disk: want a PUBACK with reason 128, mosquitto_pub says:\n%s", out)
	}
	time.Sleep(time.Second)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freedAt := time.Now()
	run.end(t)
	full := tallyStored(t, th.admin, devices)
	t.Logf("through the full disk: %s", full)
	if full.missing != 0 {
		t.Fatalf("%d acknowledged posts lost to a full disk", full.missing)
	}
	if full.refused == 0 {
		t.Fatal("no post was refused while the disk was full: the fault did not bite")
	}

	// Storing resumes by itself: a fresh run is acknowledged and stored.
	run = startLoad(devices, "tcp://"+th.MQTTAddr(), 20*time.Millisecond)
	time.Sleep(time.Second)
	run.end(t)
	after := tallyStored(t, th.admin, devices)
	t.Logf("after freeing the disk (%.1fs ago): %s", time.Since(freedAt).Seconds(), after)
	if after.missing != 0 || after.acked <= full.acked {
		t.Fatalf("after the disk was freed: %s; want new posts acknowledged and stored", after)
	}
}

// mqtt5Post posts one measurepoint as d over MQTT 5 with mosquitto_pub and
// returns its debug output, which names the PUBACK's reason code.
func mqtt5Post(t testing.TB, addr string, d *loadDevice) string {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	cid, user, pass, err := sign.Credentials(d.dk+"-v5", d.pk, d.dk, d.secret, 2, sign.SHA256, strconv.FormatInt(time.Now().UnixMilli(), 10))
	if err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command(needTool(t, "mosquitto_pub"), "-V", "mqttv5", "-d", "-q", "1", "-h", host, "-p", port,
		"-i", cid, "-u", user, "-P", pass, "-t", d.topic(),
		"-m", `{"id":"v5","version":"1.0","method":"thing.measurepoint.post","params":{"measurepoints":{"n":0}}}`).CombinedOutput()
	return string(out)
}

// fillDisk writes to path until the file system is full.
func fillDisk(t testing.TB, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatal(err)
		}
	}
}

// PostgreSQL restarted (immediate shutdown, as in a crash) under load: no
// acknowledged post is missing and storing resumes without a hub restart.
func TestFaultPostgresRestartLosesNoAcknowledgedPost(t *testing.T) {
	cluster, url := ownPostgres(t, pgtest.Options{Durable: true})
	th := startHubWith(t, "", hub.Config{DatabaseURL: url})
	devices := loadDevices(t, th.admin, 20)
	run := startLoad(devices, "tcp://"+th.MQTTAddr(), 20*time.Millisecond)
	time.Sleep(500 * time.Millisecond)
	if err := cluster.CrashRestart(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	run.end(t)
	tally := waitTally(t, th.admin, devices)
	t.Logf("through a PostgreSQL restart: %s", tally)
	if tally.missing != 0 {
		t.Fatalf("%d acknowledged posts lost to a PostgreSQL restart", tally.missing)
	}
	run = startLoad(devices, "tcp://"+th.MQTTAddr(), 20*time.Millisecond)
	time.Sleep(time.Second)
	run.end(t)
	after := tallyStored(t, th.admin, devices)
	if after.missing != 0 || after.acked <= tally.acked {
		t.Fatalf("after the restart: %s; want new posts acknowledged and stored", after)
	}
}

// waitTally reads the stored posts, retrying while the API's own database
// connections come back after a restart.
func waitTally(t testing.TB, api *client.Client, devices []*loadDevice) loadTally {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := api.Device(context.Background(), devices[0].pk, devices[0].dk)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	return tallyStored(t, api, devices)
}

// Posts the store would refuse are answered with their own error code,
// store nothing, and leave the session working.
func TestBadPostsAreRefusedAndChangeNothing(t *testing.T) {
	th := startHub(t, "")
	devices := loadDevices(t, th.admin, 1)
	d := devices[0]
	c := connect(t, deviceOptions("tcp://"+th.MQTTAddr(), d.pk, d.dk, d.secret, 2))
	replies := make(chan map[string]any, 10)
	if tok := c.Subscribe(d.topic()+"_reply", 0, func(_ paho.Client, m paho.Message) {
		var r map[string]any
		json.Unmarshal(m.Payload(), &r)
		replies <- r
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	many := make([]string, 10000)
	for i := range many {
		many[i] = fmt.Sprintf(`"p%d":%d`, i, i)
	}
	post := func(params string) string {
		return `{"id":"7","version":"1.0","method":"thing.measurepoint.post","params":` + params + `}`
	}
	for _, c2 := range []struct {
		name, payload string
		code          float64
	}{
		{"over the payload cap", post(`{"measurepoints":{"s":"` + strings.Repeat("x", 520<<10) + `"}}`), 1008},
		{"params not an object", post(`[1,2,3]`), 1220},
		{"measurepoints not an object", post(`{"measurepoints":"temp"}`), 1220},
		{"10,000 measurepoints (over the stored-post cap)", post(`{"measurepoints":{` + strings.Join(many, ",") + `}}`), 1008},
		{"1,001 measurepoints", post(`{"measurepoints":{` + strings.Join(many[:1001], ",") + `}}`), 1220},
		{"NaN", post(`{"measurepoints":{"t":NaN}}`), 1220},
		{"Infinity", post(`{"measurepoints":{"t":Infinity}}`), 1220},
		{"deeply nested", post(`{"measurepoints":{"t":` + strings.Repeat(`{"a":`, 50) + `1` + strings.Repeat(`}`, 50) + `}}`), 1220},
		{"empty name", post(`{"measurepoints":{"":1}}`), 1220},
	} {
		if tok := c.Publish(d.topic(), 1, false, c2.payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("%s: publish: %v", c2.name, tok.Error())
		}
		select {
		case r := <-replies:
			if r["code"] != c2.code || r["message"] == "" {
				t.Fatalf("%s: reply %v, want code %v with a message", c2.name, r, c2.code)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no reply", c2.name)
		}
	}
	if tok := c.Publish(d.topic(), 1, false, post(`{"measurepoints":{"n":1}}`)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("good post after the bad ones: %v", tok.Error())
	}
	if r := <-replies; r["code"] != 200.0 {
		t.Fatalf("good post after the bad ones answered %v", r)
	}
	if stored := storedPosts(t, th.admin, d); len(stored) != 1 || !stored[1] {
		t.Fatalf("stored %v, want only the good post", stored)
	}
}
