package e2e

import (
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iothub/iothub/sign"
)

// A device's will is published when its connection drops, and only then:
// an application subscribed to the will topics gets the will of the
// device whose socket died, not that of the device that said DISCONNECT.
func TestWillOnlyWhenTheConnectionDrops(t *testing.T) {
	th := startHub(t, "")
	p := th.newProduct(t, map[string]any{"name": "lwt"})
	var mu sync.Mutex
	var wills []string
	appClient(t, th, th.AdminKey(), map[string]func([]byte){"/sys/+/+/lwt": func(b []byte) {
		mu.Lock()
		wills = append(wills, string(b))
		mu.Unlock()
	}})

	login := func(dk string) (paho.Client, *net.Conn) {
		d := th.newDevice(t, p, dk)
		o := deviceOptions("tcp://"+th.MQTTAddr(), p.ProductKey, dk, d.DeviceSecret, sign.ModeStatic)
		o.SetWill("/sys/"+p.ProductKey+"/"+dk+"/lwt", dk+" is gone", 1, false)
		var sock net.Conn
		o.SetCustomOpenConnectionFn(func(u *url.URL, _ paho.ClientOptions) (net.Conn, error) {
			c, err := net.Dial("tcp", u.Host)
			sock = c
			return c, err
		})
		return connect(t, o), &sock
	}
	_, dropped := login("dropped")
	polite, _ := login("polite")
	polite.Disconnect(100)
	(*dropped).Close() // no DISCONNECT: the hub sees the connection die

	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(wills)
		mu.Unlock()
		if n > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // room for a will that should not come
	mu.Lock()
	defer mu.Unlock()
	if len(wills) != 1 || wills[0] != "dropped is gone" {
		t.Fatalf("wills received: %q, want only the dropped device's", wills)
	}
}
