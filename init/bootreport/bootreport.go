// Package bootreport tells the boot server how a netbooted host is doing
// (kernel cmdline magestack.report=URL) and, for discovery boots
// (magestack.discover=URL), what hardware an unknown machine has. Reports
// are best effort: bounded retries, never blocking the boot.
package bootreport

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Report is what is posted; it matches the boot server's /report.
type Report struct {
	Host     string         `json:"host"`
	MAC      string         `json:"mac"`
	Event    string         `json:"event"`
	UptimeMS int64          `json:"uptime_ms,omitempty"`
	Hardware map[string]any `json:"hardware,omitempty"`
	Error    string         `json:"error,omitempty"`
}

// Send posts r to url, retrying with backoff until ctx ends or 5 tries.
func Send(ctx context.Context, url string, r Report) error {
	body, err := json.Marshal(r)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 5 * time.Second}
	wait := 250 * time.Millisecond
	var last error
	for try := 0; try < 5; try++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("report to %s: %w", url, err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err == nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return nil
			}
			err = fmt.Errorf("boot server answered %s", resp.Status)
			if resp.StatusCode/100 == 4 {
				return fmt.Errorf("report to %s: %w", url, err)
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("report to %s: %w (last error: %v)", url, ctx.Err(), last)
		case <-time.After(wait):
		}
		wait *= 2
	}
	return fmt.Errorf("report to %s: %w", url, last)
}

// Inventory describes the machine from /sys and /proc under root ("/" on a
// host; a fixture directory in tests): NICs with MACs, disks with sizes,
// CPU model and count, memory.
func Inventory(root string) map[string]any {
	inv := map[string]any{}
	var nics []map[string]string
	if entries, err := os.ReadDir(filepath.Join(root, "sys/class/net")); err == nil {
		for _, e := range entries {
			if e.Name() == "lo" {
				continue
			}
			mac := readTrim(filepath.Join(root, "sys/class/net", e.Name(), "address"))
			nic := map[string]string{"name": e.Name(), "mac": mac}
			if drv, err := os.Readlink(filepath.Join(root, "sys/class/net", e.Name(), "device/driver")); err == nil {
				nic["driver"] = filepath.Base(drv)
			}
			nics = append(nics, nic)
		}
	}
	inv["nics"] = nics
	var disks []map[string]any
	if entries, err := os.ReadDir(filepath.Join(root, "sys/block")); err == nil {
		for _, e := range entries {
			n := e.Name()
			if strings.HasPrefix(n, "loop") || strings.HasPrefix(n, "ram") || strings.HasPrefix(n, "zram") {
				continue
			}
			sectors, _ := strconv.ParseInt(readTrim(filepath.Join(root, "sys/block", n, "size")), 10, 64)
			disks = append(disks, map[string]any{"name": n, "bytes": sectors * 512,
				"model": readTrim(filepath.Join(root, "sys/block", n, "device/model"))})
		}
	}
	inv["disks"] = disks
	cpus, model := 0, ""
	if f, err := os.Open(filepath.Join(root, "proc/cpuinfo")); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if !ok {
				continue
			}
			switch strings.TrimSpace(k) {
			case "processor":
				cpus++
			case "model name":
				model = strings.TrimSpace(v)
			}
		}
		f.Close()
	}
	inv["cpus"] = cpus
	inv["cpu_model"] = model
	if f, err := os.Open(filepath.Join(root, "proc/meminfo")); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
				inv["memory_bytes"] = kb * 1024
			}
		}
		f.Close()
	}
	return inv
}

func readTrim(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
