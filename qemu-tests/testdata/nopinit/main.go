// Command nopinit is a do-nothing PID 1: the baseline for boot benchmarks
// and the guest of the QEMU harness's self-test. It mounts proc, sys and
// devtmpfs, prints when it started, and powers off on request ("poweroff"
// typed on the console) or after nopinit.poweroff_after=<duration>. For the
// self-tests it can also load the modules under /lib/modules
// (nopinit.modules=1), report an interface's carrier (nopinit.carrier=eth0)
// and arm the watchdog without feeding it (nopinit.watchdog=<seconds>).
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	_ = os.MkdirAll("/proc", 0o755)
	_ = os.MkdirAll("/sys", 0o755)
	_ = os.MkdirAll("/dev", 0o755)
	mountErr := unix.Mount("proc", "/proc", "proc", 0, "")
	_ = unix.Mount("sysfs", "/sys", "sysfs", 0, "")
	_ = unix.Mount("devtmpfs", "/dev", "devtmpfs", 0, "")

	var out io.Writer = os.Stdout
	con, err := os.OpenFile("/dev/console", os.O_RDWR, 0)
	if err == nil {
		out = con
	}
	logf := func(format string, args ...any) { fmt.Fprintf(out, "nopinit: "+format+"\n", args...) }

	if mountErr != nil {
		logf("mount /proc: %v", mountErr)
	}
	logf("pid1 uptime_ms=%d", uptimeMS())
	firmware := "bios"
	if _, err := os.Stat("/sys/firmware/efi"); err == nil {
		firmware = "uefi"
	}
	logf("firmware=%s", firmware)

	cmdline, _ := os.ReadFile("/proc/cmdline")
	args := parseCmdline(string(cmdline))

	poweroff := make(chan string, 1)
	if d, ok := args["nopinit.poweroff_after"]; ok {
		dur, err := time.ParseDuration(d)
		if err != nil {
			logf("bad nopinit.poweroff_after=%q: %v", d, err)
		} else {
			time.AfterFunc(dur, func() { poweroff <- "timer " + d })
		}
	}
	if con != nil {
		go readCommands(con, logf, poweroff)
	}
	if tty := args["nopinit.serial"]; tty != "" {
		go echoSerial("/dev/"+tty, logf)
	}
	if args["nopinit.modules"] == "1" {
		loadModules("/lib/modules", logf)
	}
	if ifname := args["nopinit.carrier"]; ifname != "" {
		go watchCarrier(ifname, logf)
	}
	// Held open until power off: a closed watchdog is fed by the kernel.
	var watchdog *os.File
	if secs := args["nopinit.watchdog"]; secs != "" {
		watchdog = armWatchdog(secs, logf)
	}

	why := <-poweroff
	runtime.KeepAlive(watchdog)
	logf("powering off (%s) uptime_ms=%d", why, uptimeMS())
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		logf("power off: %v", err)
	}
	select {} // PID 1 must not exit: that panics the kernel
}

func uptimeMS() int64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return -1
	}
	f, err := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	if err != nil {
		return -1
	}
	return int64(f * 1000)
}

func parseCmdline(s string) map[string]string {
	m := map[string]string{}
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		m[k] = v
	}
	return m
}

// readCommands answers lines typed on the console.
func readCommands(con *os.File, logf func(string, ...any), poweroff chan<- string) {
	sc := bufio.NewScanner(con)
	for sc.Scan() {
		switch strings.TrimSpace(sc.Text()) {
		case "poweroff":
			poweroff <- "console"
			return
		case "ping":
			logf("pong uptime_ms=%d", uptimeMS())
		}
	}
}

// loadModules loads every .ko under dir in name order (the test names them
// so that order satisfies dependencies).
func loadModules(dir string, logf func(string, ...any)) {
	paths, _ := filepath.Glob(filepath.Join(dir, "*.ko"))
	sort.Strings(paths)
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			logf("module %s: %v", p, err)
			continue
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && err != unix.EEXIST {
			logf("module %s: %v", filepath.Base(p), err)
			continue
		}
		logf("module %s loaded", filepath.Base(p))
	}
}

// echoSerial greets on a second serial port and echoes each line it reads
// there, on that port and on the console.
func echoSerial(path string, logf func(string, ...any)) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		logf("serial %s: %v", path, err)
		return
	}
	fmt.Fprintf(f, "nopinit: hello on %s\n", path)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fmt.Fprintf(f, "nopinit: echo %s\n", sc.Text())
		logf("serial %s got %q", path, sc.Text())
	}
}

// armWatchdog starts /dev/watchdog with a timeout of secs seconds and
// never feeds it again: the machine must be reset by the watchdog.
func armWatchdog(secs string, logf func(string, ...any)) *os.File {
	timeout, err := strconv.Atoi(secs)
	if err != nil {
		logf("bad nopinit.watchdog=%q: %v", secs, err)
		return nil
	}
	var f *os.File
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		f, err = os.OpenFile("/dev/watchdog", os.O_WRONLY, 0)
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		logf("watchdog: %v", err)
		return nil
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.WDIOC_SETTIMEOUT, timeout); err != nil {
		logf("watchdog: set timeout: %v", err)
	}
	if err := unix.IoctlWatchdogKeepalive(int(f.Fd())); err != nil {
		logf("watchdog: keepalive: %v", err)
	}
	logf("watchdog armed timeout=%ds uptime_ms=%d", timeout, uptimeMS())
	return f
}

// watchCarrier brings ifname up and reports each carrier change.
func watchCarrier(ifname string, logf func(string, ...any)) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := setUp(ifname)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			logf("link %s: %v", ifname, err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	last := ""
	for {
		b, err := os.ReadFile("/sys/class/net/" + ifname + "/carrier")
		state := strings.TrimSpace(string(b))
		if err != nil {
			state = "?"
		}
		if state != last {
			logf("link %s carrier=%s uptime_ms=%d", ifname, state, uptimeMS())
			last = state
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func setUp(ifname string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(ifname)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
