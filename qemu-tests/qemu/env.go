package qemu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Environment variables the harness reads.
const (
	EnvQEMU         = "MAGESTACK_QEMU"          // "1" runs the QEMU tests
	EnvBuild        = "MAGESTACK_BUILD"         // image directory; default <repo>/build
	EnvTimeoutScale = "MAGESTACK_TIMEOUT_SCALE" // multiplies every harness timeout
	EnvArtifacts    = "MAGESTACK_ARTIFACTS"     // where failed tests leave console logs
)

// DebianKernel is the extracted Debian kernel the buildroot started from
// (the current one is named by build/kernel/version);
// it boots even before `make image` has produced build/vmlinuz.
const DebianKernel = "kernel/root/boot/vmlinuz-6.1.0-56-amd64"

// Require skips the test unless QEMU tests were asked for (MAGESTACK_QEMU=1,
// set by `make test`).
func Require(t testing.TB) {
	t.Helper()
	if os.Getenv(EnvQEMU) != "1" {
		t.Skipf("QEMU test: set %s=1 to run it (make test does)", EnvQEMU)
	}
	if _, err := findQEMU(); err != nil {
		t.Fatalf("%s=1 but %v", EnvQEMU, err)
	}
}

// Scale returns d multiplied by MAGESTACK_TIMEOUT_SCALE (default 1), for
// slower machines. Timeouts only catch hangs; they never decide a result.
func Scale(d time.Duration) time.Duration {
	f, err := TimeoutScale()
	if err != nil {
		f = 1
	}
	return time.Duration(float64(d) * f)
}

// TimeoutScale parses MAGESTACK_TIMEOUT_SCALE; unset or empty means 1.
func TimeoutScale() (float64, error) {
	return parseScale(os.Getenv(EnvTimeoutScale))
}

func parseScale(s string) (float64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 1, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 || f > 1000 {
		return 1, fmt.Errorf("%s=%q: want a positive number such as 2 or 0.5", EnvTimeoutScale, s)
	}
	return f, nil
}

// RepoRoot finds the magestack module root by walking up from the working
// directory (tests run in their package directory).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("repo root: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(b), "module magestack\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repo root: no go.mod of module magestack above the working directory")
		}
		dir = parent
	}
}

// BuildDir is MAGESTACK_BUILD or <repo>/build.
func BuildDir() (string, error) {
	if d := os.Getenv(EnvBuild); d != "" {
		return filepath.Abs(d)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "build"), nil
}

// Image is the product image `make image` writes.
type Image struct {
	Kernel    string // build/vmlinuz
	Initramfs string // build/initramfs.img
	Binary    string // build/magestack
}

// ImagePaths returns the image paths without checking them.
func ImagePaths() (Image, error) {
	dir, err := BuildDir()
	if err != nil {
		return Image{}, err
	}
	return Image{
		Kernel:    filepath.Join(dir, "vmlinuz"),
		Initramfs: filepath.Join(dir, "initramfs.img"),
		Binary:    filepath.Join(dir, "magestack"),
	}, nil
}

// Check names every missing file of the image.
func (im Image) Check() error {
	var missing []string
	for _, p := range []string{im.Kernel, im.Initramfs, im.Binary} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("image incomplete, run `make image` (or set %s): missing %s", EnvBuild, strings.Join(missing, ", "))
	}
	return nil
}

// RequireImage returns the product image, failing the test clearly when a
// file is missing (QEMU tests were asked for, so a missing image is an error,
// not a skip).
func RequireImage(t testing.TB) Image {
	t.Helper()
	im, err := ImagePaths()
	if err != nil {
		t.Fatal(err)
	}
	if err := im.Check(); err != nil {
		t.Fatal(err)
	}
	return im
}

// KernelPath returns build/vmlinuz when it exists, else the extracted Debian
// kernel under build/kernel, so harness tests run before the image is made.
func KernelPath() (string, error) {
	dir, err := BuildDir()
	if err != nil {
		return "", err
	}
	for _, p := range []string{filepath.Join(dir, "vmlinuz"), filepath.Join(dir, debianKernel(dir))} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no kernel: neither %s nor %s exists (run `make image`)",
		filepath.Join(dir, "vmlinuz"), filepath.Join(dir, debianKernel(dir)))
}

// KernelModulesDir returns the module tree of the extracted Debian kernel.
func KernelModulesDir() (string, error) {
	dir, err := BuildDir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "kernel/root/lib/modules", kernelVersion(dir))
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("kernel modules: %w", err)
	}
	return p, nil
}

// kernelVersion is the version buildroot/fetch-kernel.sh recorded in
// build/kernel/version (Debian moves it with every kernel update).
func kernelVersion(dir string) string {
	if b, err := os.ReadFile(filepath.Join(dir, "kernel", "version")); err == nil {
		if v := strings.TrimSpace(string(b)); v != "" {
			return v
		}
	}
	return "6.1.0-56-amd64"
}

// debianKernel is the extracted kernel's path inside the build directory.
func debianKernel(dir string) string {
	return filepath.Join("kernel/root/boot", "vmlinuz-"+kernelVersion(dir))
}

func findQEMU() (string, error) {
	for _, p := range []string{"/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
}

// artifactDir is where a failed test's logs go.
func artifactDir(testName string) (string, error) {
	safe := strings.NewReplacer("/", "_", " ", "_").Replace(testName)
	if d := os.Getenv(EnvArtifacts); d != "" {
		return filepath.Join(d, safe), nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "qemu-tests", "artifacts", safe), nil
}
