package fence

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestQMPFencesARealQEMU starts a real (empty) QEMU machine and fences it.
func TestQMPFencesARealQEMU(t *testing.T) {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.Command(bin, "-machine", "none", "-nodefaults", "-display", "none", "-S", "-qmp", "unix:"+sock+",server=on,wait=off")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	d, err := New("qmp", "unix:"+sock, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if off, err := d.PoweredOff(ctx); err != nil || off {
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
	for _, c := range [][2]string{{"redfish", "ftp://x"}, {"qmp", "udp:1.2.3.4:5"}, {"ipmi", "10.0.0.1"}, {"magic", "x"}} {
		if _, err := New(c[0], c[1], "", ""); err == nil {
			t.Errorf("New(%q, %q) accepted", c[0], c[1])
		}
	}
}
