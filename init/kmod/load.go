package kmod

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Loader loads modules from an Index, remembering what is loaded.
type Loader struct {
	Index *Index
	Log   *slog.Logger
	// load inserts one module file; replaceable in tests.
	load func(path, params string) error
	// sysModule is /sys/module, where loaded and builtin modules show up.
	sysModule string

	mu     sync.Mutex
	loaded map[string]bool
}

// NewLoader returns a loader inserting modules into the running kernel.
func NewLoader(ix *Index, log *slog.Logger) *Loader {
	return &Loader{Index: ix, Log: log, load: insertFile, sysModule: "/sys/module", loaded: map[string]bool{}}
}

// isLoaded: in /sys/module with an initstate (modules) or present at all
// (builtins with parameters); or loaded by us.
func (l *Loader) isLoaded(name string) bool {
	if l.loaded[name] {
		return true
	}
	if l.sysModule == "" {
		return false
	}
	if b, err := os.ReadFile(filepath.Join(l.sysModule, name, "initstate")); err == nil {
		return strings.TrimSpace(string(b)) == "live"
	}
	return false
}

// Load loads the modules nameOrAlias resolves to, each with its
// dependencies in order. params applies to the named module only. An alias
// matching several modules loads all of them (as modprobe does) and
// succeeds when at least one of them is in the kernel afterwards: "crypto-
// crc32c" names both crc32c_intel, which refuses a CPU without SSE4.2
// (ENODEV), and crc32c_generic, which then serves. The returned list names
// the modules newly inserted.
func (l *Loader) Load(ctx context.Context, nameOrAlias, params string) ([]string, error) {
	mods := l.Index.Resolve(nameOrAlias)
	if len(mods) == 0 {
		return nil, fmt.Errorf("module %q: no such module or alias in %s", nameOrAlias, l.Index.Dir)
	}
	var (
		inserted []string
		errs     []error
		present  int
	)
	for _, m := range mods {
		order, err := l.Index.LoadOrder(m)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ok := true
		for _, dep := range order {
			if err := ctx.Err(); err != nil {
				return inserted, err
			}
			p := ""
			if dep == Normalize(nameOrAlias) {
				p = params
			}
			added, err := l.insert(dep, p)
			if err != nil {
				errs = append(errs, fmt.Errorf("load %s (for %s): %w", dep, nameOrAlias, err))
				ok = false
				break
			}
			if added {
				inserted = append(inserted, dep)
			}
		}
		if ok {
			present++
		}
	}
	err := errors.Join(errs...)
	if err != nil && len(mods) > 1 && present > 0 {
		if l.Log != nil {
			l.Log.Debug("some modules for an alias did not load; another serves it", "alias", nameOrAlias, "err", err)
		}
		return inserted, nil
	}
	return inserted, err
}

// insert loads one module unless it is loaded; true if this call loaded it.
func (l *Loader) insert(name, params string) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.isLoaded(name) {
		return false, nil
	}
	path, ok := l.Index.Path(name)
	if !ok {
		return false, fmt.Errorf("module %s has no file in modules.dep", name)
	}
	err := l.load(path, params)
	if errors.Is(err, unix.EEXIST) {
		l.loaded[name] = true
		return false, nil
	}
	if err != nil {
		return false, err
	}
	l.loaded[name] = true
	return true, nil
}

// insertFile loads a module file into the kernel.
func insertFile(path, params string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	compressed := !strings.HasSuffix(path, ".ko")
	flags := 0
	if compressed {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), params, flags)
	if err == nil || errors.Is(err, unix.EEXIST) || !compressed {
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("finit_module %s: %w", path, err)
		}
		return err
	}
	// The kernel cannot decompress this file itself (no
	// CONFIG_MODULE_DECOMPRESS, or another algorithm): gzip we can do here.
	if !strings.HasSuffix(path, ".gz") {
		return fmt.Errorf("finit_module %s: %w (the kernel cannot decompress it, and only .ko.gz is decompressed in user space)", path, err)
	}
	if _, serr := f.Seek(0, io.SeekStart); serr != nil {
		return fmt.Errorf("rewind %s: %w", path, serr)
	}
	image, zerr := gunzip(f)
	if zerr != nil {
		return fmt.Errorf("gunzip %s: %w", path, zerr)
	}
	if err := unix.InitModule(image, params); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return err
		}
		return fmt.Errorf("init_module %s: %w", path, err)
	}
	return nil
}

// maxModuleSize bounds a decompressed module (the largest in Debian's tree
// is a few tens of MiB), so a corrupt file cannot exhaust PID 1's memory.
const maxModuleSize = 256 << 20

func gunzip(r io.Reader) ([]byte, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(zr, maxModuleSize+1))
	if err != nil {
		return nil, err
	}
	if n > maxModuleSize {
		return nil, fmt.Errorf("decompressed module larger than %d bytes", maxModuleSize)
	}
	return buf.Bytes(), nil
}

// ColdplugResult says what a coldplug run did.
type ColdplugResult struct {
	Loaded []string `json:"loaded"`
	// Unmatched counts devices whose modalias no module claims (many are
	// served by builtin drivers or need none).
	Unmatched int     `json:"unmatched"`
	Errors    []error `json:"-"`
}

// Coldplug loads a driver for every device the kernel found before PID 1
// ran: each /sys/bus/*/devices/*/modalias (and /sys/class/input/*/modalias)
// is resolved through modules.alias. Loading a bus driver reveals new
// devices (virtio_pci creates the virtio devices virtio_net then claims;
// button creates the input device evdev claims), so it repeats up to rounds
// times, reading only devices not seen before, and stops early once a round
// loads nothing.
func (l *Loader) Coldplug(ctx context.Context, sysfs string, rounds int) ColdplugResult {
	var res ColdplugResult
	sc := &deviceScanner{sysfs: sysfs, seenDev: map[string]bool{}, seenAlias: map[string]bool{}}
	for round := 1; round <= rounds; round++ {
		start := time.Now()
		aliases := sc.newModaliases()
		scanned := time.Since(start)
		progress := false
		for _, a := range aliases {
			if len(l.Index.Resolve(a)) == 0 {
				res.Unmatched++
				if l.Log != nil {
					l.Log.Debug("coldplug: no module for device", "modalias", a)
				}
				continue
			}
			loaded, err := l.Load(ctx, a, "")
			if len(loaded) > 0 {
				progress = true
				res.Loaded = append(res.Loaded, loaded...)
			}
			if err != nil {
				// A driver that fails to bind (ENODEV: the device is not
				// really there) is common and harmless for the others.
				res.Errors = append(res.Errors, err)
			}
		}
		if l.Log != nil {
			l.Log.Debug("coldplug round", "round", round, "new_devices", len(aliases), "loaded_so_far", len(res.Loaded),
				"scan", scanned.Round(time.Millisecond), "took", time.Since(start).Round(time.Millisecond))
		}
		if ctx.Err() != nil || !progress {
			break
		}
	}
	return res
}

// deviceScanner finds device modaliases, each device read once: sysfs reads
// are slow under emulation and later rounds only need the new devices.
type deviceScanner struct {
	sysfs     string
	seenDev   map[string]bool
	seenAlias map[string]bool
}

// newModaliases returns the distinct modaliases of devices not seen before,
// sorted: on every bus, and input devices (a class, not a bus; no other
// class carries a modalias).
func (d *deviceScanner) newModaliases() []string {
	var dirs []string
	if buses, err := os.ReadDir(filepath.Join(d.sysfs, "bus")); err == nil {
		for _, b := range buses {
			dirs = append(dirs, filepath.Join(d.sysfs, "bus", b.Name(), "devices"))
		}
	}
	dirs = append(dirs, filepath.Join(d.sysfs, "class", "input"))
	var out []string
	for _, dir := range dirs {
		devs, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, dev := range devs {
			p := filepath.Join(dir, dev.Name(), "modalias")
			if d.seenDev[p] {
				continue
			}
			b, err := os.ReadFile(p)
			if err != nil {
				continue // none (yet): a device being added gets it shortly
			}
			d.seenDev[p] = true
			a := strings.TrimSpace(string(b))
			if a != "" && !d.seenAlias[a] {
				d.seenAlias[a] = true
				out = append(out, a)
			}
		}
	}
	sort.Strings(out)
	return out
}

// SetModprobePath makes the kernel run path for its own module requests
// (/proc/sys/kernel/modprobe).
func SetModprobePath(path string) error {
	if err := os.WriteFile("/proc/sys/kernel/modprobe", []byte(path+"\n"), 0o644); err != nil {
		return fmt.Errorf("set kernel modprobe helper to %s: %w", path, err)
	}
	return nil
}
