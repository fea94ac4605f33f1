// Package watchdog drives the hardware watchdog (/dev/watchdog; i6300esb in
// QEMU). PID 1 kicks it from the loop that also renews its cluster lease, so
// a host whose PID 1 hangs is reset by the hardware before a peer could
// take over what it still believes it owns.
package watchdog

import (
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Watchdog is an open watchdog device. Closing it cleanly disarms it.
type Watchdog struct {
	mu      sync.Mutex
	f       *os.File
	timeout time.Duration
}

// Open arms the device with timeout (whole seconds; the driver may round).
func Open(path string, timeout time.Duration) (*Watchdog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("watchdog %s: %w", path, err)
	}
	secs := int(timeout.Round(time.Second) / time.Second)
	if secs < 1 {
		secs = 1
	}
	w := &Watchdog{f: f, timeout: time.Duration(secs) * time.Second}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.WDIOC_SETTIMEOUT, secs); err != nil {
		// Some drivers only support their fixed timeout; keep going with it.
		if got, gerr := unix.IoctlGetInt(int(f.Fd()), unix.WDIOC_GETTIMEOUT); gerr == nil {
			w.timeout = time.Duration(got) * time.Second
		}
	} else if got, gerr := unix.IoctlGetInt(int(f.Fd()), unix.WDIOC_GETTIMEOUT); gerr == nil {
		w.timeout = time.Duration(got) * time.Second
	}
	return w, w.Kick()
}

// Timeout is the armed timeout.
func (w *Watchdog) Timeout() time.Duration { return w.timeout }

// Kick postpones the reset by one timeout.
func (w *Watchdog) Kick() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	if err := unix.IoctlWatchdogKeepalive(int(w.f.Fd())); err != nil {
		return fmt.Errorf("watchdog keepalive: %w", err)
	}
	return nil
}

// Close disarms the watchdog with the magic close character, for a clean
// shutdown or reboot.
func (w *Watchdog) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	w.f.Write([]byte("V"))
	err := w.f.Close()
	w.f = nil
	return err
}
