package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"magestack/qemu-tests/qemu"
)

func TestNetworkUp(t *testing.T) {
	tests := []struct {
		name    string
		console string
		want    float64
		wantErr string
	}{
		{"explicit line wins", "magestack: timeline network start_ms=1 end_ms=900 ok\nmagestack: network up uptime_ms=2100\n", 2100, ""},
		{"timeline step", "magestack: timeline mounts start_ms=1 end_ms=5 ok\nmagestack: timeline network start_ms=5 end_ms=2400 ok\n", 2400, ""},
		{"retried step: last entry", "magestack: timeline netconf start_ms=5 end_ms=900 error\nmagestack: timeline netconf start_ms=1000 end_ms=1500 ok\n", 1500, ""},
		{"failed step", "magestack: timeline network start_ms=5 end_ms=900 error\n", 0, "ended in error"},
		{"nothing", "magestack: stack ready uptime_ms=5000\n", 0, "no network-up line"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := networkUp(tt.console)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("networkUp = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestMedianOf(t *testing.T) {
	get := func(r bootResult) (float64, error) { return r.netUpMS, r.netUpErr }
	rs := []bootResult{{netUpMS: 3000}, {netUpMS: 1000}, {netUpErr: errors.New("timed out")}, {netUpMS: 2000}, {netUpMS: 9000}}
	if f := medianOf(rs, nil, get, "ms"); !f.ok() || f.val != 2500 || f.String() != "2500 ms" {
		t.Fatalf("median of the 4 good boots = %+v (%s), want 2500 ms", f, f)
	}
	if f := medianOf(rs, errors.New("build/initramfs.img missing (run make image)\ndetail"), get, "ms"); f.ok() || f.String() != "n/a: build/initramfs.img missing (run make image)" {
		t.Fatalf("boot error: %s", f)
	}
	bad := []bootResult{{netUpErr: errors.New("no network-up line")}}
	if f := medianOf(bad, nil, get, "ms"); f.String() != "n/a: no network-up line" {
		t.Fatalf("no good boot: %s", f)
	}
	if median([]float64{5, 1, 3}) != 3 {
		t.Fatal("odd median")
	}
}

func TestFileSize(t *testing.T) {
	if f := fileSize("/nonexistent/initramfs.img"); f.ok() || !strings.Contains(f.String(), "n/a: initramfs.img missing") {
		t.Fatalf("missing file: %s", f)
	}
}

func TestFirstLineNamesTheCause(t *testing.T) {
	err := fmtWrap(&qemu.ExpectError{Pattern: "x", Err: qemu.ErrKernelPanic, Tail: "long\ntail"})
	if got := firstLine(err); got != "line not seen: kernel panic on the console" {
		t.Fatalf("firstLine = %q", got)
	}
}

func fmtWrap(err error) error { return fmt.Errorf("vm magestack: %w", err) }
