package supervise

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// IsCgroup2 reports whether dir lies on a cgroup v2 filesystem.
func IsCgroup2(dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	return st.Type == unix.CGROUP2_SUPER_MAGIC
}

// openCgroup creates the cgroup directory if needed and opens it for
// CLONE_INTO_CGROUP.
func openCgroup(dir string) (int, error) {
	parent := filepath.Dir(dir)
	if !IsCgroup2(parent) {
		return -1, fmt.Errorf("cgroup %s: %s is not a cgroup v2 filesystem", dir, parent)
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		return -1, fmt.Errorf("cgroup %s: %w", dir, err)
	}
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("cgroup %s: open: %w", dir, err)
	}
	return fd, nil
}

// parseKeyed parses "key value" lines (cpu.stat, memory.events).
func parseKeyed(b []byte) map[string]uint64 {
	m := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
			m[f[0]] = v
		}
	}
	return m
}

func readKeyed(dir, file, key string) (uint64, bool) {
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		return 0, false
	}
	v, ok := parseKeyed(b)[key]
	return v, ok
}

// oomKills reads the oom_kill counter of memory.events.
func oomKills(dir string) (uint64, bool) { return readKeyed(dir, "memory.events", "oom_kill") }

func cgroupCPUUsec(dir string) (uint64, bool) { return readKeyed(dir, "cpu.stat", "usage_usec") }

func cgroupMemory(dir string) (uint64, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "memory.current"))
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return v, err == nil
}

// cgroupProcs lists the pids in the cgroup (not its children).
func cgroupProcs(dir string) []int {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// waitCgroupEmpty waits until no process is left in the cgroup (or the
// cgroup is gone), up to bound.
func waitCgroupEmpty(dir string, bound time.Duration) bool {
	deadline := time.Now().Add(bound)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil || parseKeyed(b)["populated"] == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// killCgroup kills every process of the cgroup and its children: through
// cgroup.kill (Linux 5.14+), else one by one.
func killCgroup(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err == nil {
		return nil
	}
	var firstErr error
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		for _, pid := range cgroupProcs(p) {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH && firstErr == nil {
				firstErr = fmt.Errorf("kill %d in %s: %w", pid, p, err)
			}
		}
		return nil
	})
	return firstErr
}

// procStats reads a single process's CPU time and resident memory, used
// when the unit has no cgroup of its own.
func procStats(pid int) (cpuUsec, rssBytes uint64, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// Fields after the command (which may contain spaces) start at ") ".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15; rss is 24.
	if len(f) < 22 {
		return 0, 0, false
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	rss, _ := strconv.ParseUint(f[21], 10, 64)
	const clkTck = 100 // USER_HZ on every Linux architecture magestack runs on
	return (ut + st) * (1_000_000 / clkTck), rss * uint64(os.Getpagesize()), true
}
