package pid1

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// Input event constants from linux/input-event-codes.h.
const (
	evKey    = 0x01
	keyPower = 116
	// inputEventSize is sizeof(struct input_event) on 64-bit: a timeval
	// (16 bytes), type and code (u16 each) and value (s32).
	inputEventSize = 24
)

// WatchPowerButton calls onPress when any input device reports KEY_POWER
// pressed. This is how an ACPI power button (QEMU's system_powerdown, a
// chassis button) reaches PID 1: Debian's kernel needs the `button` module
// for the ACPI device and `evdev` for /dev/input/event*; coldplug loads both.
// Devices appearing later are picked up by rescanning dir every few seconds
// until ctx ends.
func WatchPowerButton(ctx context.Context, log *slog.Logger, dir string, onPress func()) {
	watching := map[string]bool{}
	Go(log, "power button", func() {
		for {
			paths, _ := filepath.Glob(filepath.Join(dir, "event*"))
			for _, p := range paths {
				if watching[p] {
					continue
				}
				f, err := os.Open(p)
				if err != nil {
					continue
				}
				watching[p] = true
				log.Debug("watching input device for the power key", "device", p)
				Go(log, "input "+p, func() {
					defer f.Close()
					if readPowerKey(f) {
						log.Info("power button pressed", "device", p)
						onPress()
					}
				})
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(3 * time.Second):
			}
		}
	})
}

// readPowerKey reads input events until a KEY_POWER press (true) or the end
// of the stream (false).
func readPowerKey(r io.Reader) bool {
	buf := make([]byte, inputEventSize*16)
	for {
		n, err := io.ReadAtLeast(r, buf, inputEventSize)
		for off := 0; off+inputEventSize <= n; off += inputEventSize {
			ev := buf[off : off+inputEventSize]
			typ := binary.NativeEndian.Uint16(ev[16:])
			code := binary.NativeEndian.Uint16(ev[18:])
			value := int32(binary.NativeEndian.Uint32(ev[20:]))
			if typ == evKey && code == keyPower && value == 1 {
				return true
			}
		}
		if err != nil {
			return false
		}
	}
}
