package bootreport

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

func TestSendRetriesServerErrorsAndStopsOnClientErrors(t *testing.T) {
	var calls atomic.Int32
	var got Report
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		json.NewDecoder(r.Body).Decode(&got)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := Send(ctx, srv.URL, Report{Host: "dh1", MAC: "52:54:00:00:00:01", Event: "ready", UptimeMS: 4200}); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 2 || got.Host != "dh1" || got.UptimeMS != 4200 {
		t.Fatalf("calls=%d report=%+v", calls.Load(), got)
	}

	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "bad report", http.StatusBadRequest)
	}))
	defer bad.Close()
	calls.Store(0)
	if err := Send(ctx, bad.URL, Report{}); err == nil || calls.Load() != 1 {
		t.Fatalf("4xx: err=%v after %d calls, want an error after 1", err, calls.Load())
	}
}

func TestInventoryReadsFixture(t *testing.T) {
	root := t.TempDir()
	write := func(p, s string) {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(s), 0o644)
	}
	write("sys/class/net/eth0/address", "52:54:00:00:00:07\n")
	write("sys/class/net/lo/address", "00:00:00:00:00:00\n")
	write("sys/block/vda/size", "2097152\n")
	write("sys/block/loop0/size", "8\n")
	write("proc/cpuinfo", "processor\t: 0\nmodel name\t: QEMU Virtual CPU\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU\n")
	write("proc/meminfo", "MemTotal:        1014000 kB\nMemFree: 1 kB\n")
	inv := Inventory(root)
	b, _ := json.Marshal(inv)
	want := `{"cpu_model":"QEMU Virtual CPU","cpus":2,"disks":[{"bytes":1073741824,"model":"","name":"vda"}],"memory_bytes":1038336000,"nics":[{"mac":"52:54:00:00:00:07","name":"eth0"}]}`
	if string(b) != want {
		t.Fatalf("inventory\n got %s\nwant %s", b, want)
	}
}
