package fence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestQMPFencesARealQEMU starts a real (empty) QEMU machine with its
// monitor on a unix socket or on TCP (the stack file's host:port form) and
// fences it: power off, then confirmed off once the monitor is gone.
func TestQMPFencesARealQEMU(t *testing.T) {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	for _, tc := range []struct{ name, listen, address string }{
		{"unix socket", "unix:%s,server=on,wait=off", "unix:%s"},
		{"socket path", "unix:%s,server=on,wait=off", "%s"},
		{"tcp", "tcp:%s,server=on,wait=off", "%s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			where := filepath.Join(t.TempDir(), "qmp.sock")
			if strings.HasPrefix(tc.listen, "tcp") {
				where = freeLoopbackPort(t)
			}
			cmd := exec.Command(bin, "-machine", "none", "-nodefaults", "-display", "none", "-S", "-qmp", fmt.Sprintf(tc.listen, where))
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() { cmd.Process.Kill() })
			d, err := New("qmp", fmt.Sprintf(tc.address, where), "", "")
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			var off bool
			for i := 0; i < 100; i++ { // until QEMU listens
				if off, err = d.PoweredOff(ctx); err == nil {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil || off {
				t.Fatalf("running machine: off=%v err=%v", off, err)
			}
			if err := Fence(ctx, d, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				t.Fatal("QEMU still runs after a confirmed fence")
			}
		})
	}
}

// freeLoopbackPort returns a loopback host:port nothing listens on.
func freeLoopbackPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestQMPNeverReachedIsNotOff: a monitor address that refuses connections
// from the start (a typo in the stack file, or QEMU gone before anyone
// asked) must not count as a confirmed power off.
func TestQMPNeverReachedIsNotOff(t *testing.T) {
	for _, addr := range []string{freeLoopbackPort(t), filepath.Join(t.TempDir(), "missing.sock")} {
		d, err := New("qmp", addr, "", "")
		if err != nil {
			t.Fatal(err)
		}
		err = Fence(context.Background(), d, time.Second)
		if err == nil {
			t.Fatalf("%s: a monitor never reached counted as a confirmed fence", addr)
		}
		if !errors.Is(err, ErrUnconfirmed) && !strings.Contains(err.Error(), "power off") {
			t.Errorf("%s: unexpected error %v", addr, err)
		}
	}
}

func TestNewQMPAddresses(t *testing.T) {
	for _, tc := range []struct{ in, network, addr string }{
		{"unix:/run/qmp.sock", "unix", "/run/qmp.sock"},
		{"/run/qmp.sock", "unix", "/run/qmp.sock"},
		{"tcp:192.0.2.1:4441", "tcp", "192.0.2.1:4441"},
		{"192.0.2.1:4441", "tcp", "192.0.2.1:4441"},
		{"[2001:db8::1]:4441", "tcp", "[2001:db8::1]:4441"},
		{"hv1.example:4441", "tcp", "hv1.example:4441"},
	} {
		q, err := NewQMP(tc.in)
		if err != nil {
			t.Errorf("NewQMP(%q): %v", tc.in, err)
			continue
		}
		if q.network != tc.network || q.addr != tc.addr {
			t.Errorf("NewQMP(%q) = %s %s, want %s %s", tc.in, q.network, q.addr, tc.network, tc.addr)
		}
	}
	for _, bad := range []string{"", "unix:", "tcp:", "192.0.2.1", "tcp:192.0.2.1", "udp:192.0.2.1:4441", ":4441"} {
		if _, err := NewQMP(bad); err == nil {
			t.Errorf("NewQMP(%q) accepted", bad)
		} else if !strings.Contains(err.Error(), "qmp address") {
			t.Errorf("NewQMP(%q): %v does not name the address", bad, err)
		}
	}
}

// bmc is a protocol fixture for Redfish (no BMC exists on this machine).
type bmc struct {
	mu          sync.Mutex
	power       string
	obeyForce   bool
	resetCalled int
}

func (b *bmc) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if u, p, ok := r.BasicAuth(); !ok || u != "admin" || p != "secret" {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case r.Method == "GET" && r.URL.Path == "/redfish/v1/Systems":
		json.NewEncoder(w).Encode(map[string]any{"Members": []map[string]string{{"@odata.id": "/redfish/v1/Systems/1"}}})
	case r.Method == "GET" && r.URL.Path == "/redfish/v1/Systems/1":
		json.NewEncoder(w).Encode(map[string]string{"PowerState": b.power})
	case r.Method == "POST" && r.URL.Path == "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset":
		var body map[string]string
		json.NewDecoder(r.Body).Decode(&body)
		if body["ResetType"] != "ForceOff" {
			http.Error(w, "bad reset type", http.StatusBadRequest)
			return
		}
		b.resetCalled++
		if b.obeyForce {
			b.power = "Off"
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		http.NotFound(w, r)
	}
}

func TestRedfish(t *testing.T) {
	for _, tc := range []struct {
		name    string
		bmc     *bmc
		user    string
		wantErr error
		resets  int
	}{
		{"obeys", &bmc{power: "On", obeyForce: true}, "admin", nil, 1},
		{"already off", &bmc{power: "Off"}, "admin", nil, 0},
		{"never confirms", &bmc{power: "On"}, "admin", ErrUnconfirmed, 1},
		{"wrong password", &bmc{power: "On", obeyForce: true}, "root", errors.New("401"), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.bmc)
			defer srv.Close()
			d, err := New("redfish", srv.URL, tc.user, "secret")
			if err != nil {
				t.Fatal(err)
			}
			err = Fence(context.Background(), d, time.Second)
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("fence: %v", err)
			case tc.wantErr != nil && err == nil:
				t.Fatal("fence succeeded")
			case tc.wantErr == ErrUnconfirmed && !errors.Is(err, ErrUnconfirmed):
				t.Fatalf("fence: %v, want ErrUnconfirmed", err)
			}
			if tc.bmc.resetCalled != tc.resets {
				t.Errorf("reset called %d times, want %d", tc.bmc.resetCalled, tc.resets)
			}
		})
	}
}

func TestUnreachableBMCIsNotOff(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there now
	d, _ := New("redfish", url, "admin", "secret")
	if err := Fence(context.Background(), d, time.Second); err == nil {
		t.Fatal("an unreachable BMC counted as a confirmed fence")
	}
}

func TestNewRejectsBadDevices(t *testing.T) {
	for _, c := range [][2]string{{"redfish", "ftp://x"}, {"qmp", "udp:1.2.3.4:5"}, {"ipmi", ""}, {"magic", "x"}} {
		if _, err := New(c[0], c[1], "", ""); err == nil {
			t.Errorf("New(%q, %q) accepted", c[0], c[1])
		}
	}
}
