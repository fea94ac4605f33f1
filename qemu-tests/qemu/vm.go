// Package qemu boots magestack (or any kernel and initramfs) in
// qemu-system-x86_64 under TCG for tests: it watches the serial console,
// drives QEMU over QMP, wires VMs to taps on bridges inside network
// namespaces the test creates, and keeps the console of a failed test.
package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// VM is one running QEMU.
type VM struct {
	Name string

	opts    Options
	dir     string // console log and other private files
	sockDir string // short path for the QMP socket (sun_path is 108 bytes)
	cmd     *exec.Cmd
	console *Console
	qmp     *QMP
	stdin   *os.File
	serials []serialPort // ttyS1.. (Options.Serials)
	stderr  LockedBuffer

	done     chan struct{}
	exitCode int
	waitErr  error
}

// ConsoleFile is the console log's name inside the VM's directory.
const ConsoleFile = "console.log"

// commandTimeout bounds a single QMP command (scaled).
const commandTimeout = 15 * time.Second

// Launch starts QEMU with files under dir (console.log) and returns once
// QMP answers. It is the non-test entry point (benchmarks); tests use Start.
func Launch(opts Options, dir string) (*VM, error) {
	bin, err := findQEMU()
	if err != nil {
		return nil, err
	}
	for _, p := range []string{opts.Kernel, opts.Initrd} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%s: %w", label(opts.name()), err)
		}
	}
	sockDir, err := os.MkdirTemp("", "msqmp")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", label(opts.name()), err)
	}
	args, err := opts.args(sockDir)
	if err != nil {
		os.RemoveAll(sockDir)
		return nil, fmt.Errorf("%s: %w", label(opts.name()), err)
	}
	vm, err := launch(bin, args, opts, dir, sockDir)
	if err != nil {
		os.RemoveAll(sockDir)
		return nil, err
	}
	return vm, nil
}

func launch(bin string, args []string, opts Options, dir, sockDir string) (*VM, error) {
	vm := &VM{Name: opts.name(), opts: opts, dir: dir, sockDir: sockDir,
		console: NewConsole(), done: make(chan struct{})}
	logFile, err := os.Create(filepath.Join(dir, ConsoleFile))
	if err != nil {
		return nil, fmt.Errorf("%s: console log: %w", label(vm.Name), err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		logFile.Close()
		return nil, fmt.Errorf("%s: %w", label(vm.Name), err)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		logFile.Close()
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("%s: %w", label(vm.Name), err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, &vm.stderr
	// QEMU must not outlive a test binary killed by its timeout.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	vm.cmd = cmd
	if err := startInNetNS(opts.NetNS, cmd); err != nil {
		logFile.Close()
		outR.Close()
		outW.Close()
		inR.Close()
		inW.Close()
		return nil, fmt.Errorf("%s: starting %s: %w", label(vm.Name), bin, err)
	}
	outW.Close()
	inR.Close()
	vm.stdin = inW
	go func() {
		vm.console.pump(outR, logFile)
		outR.Close()
		logFile.Close()
	}()
	go func() {
		vm.waitErr = cmd.Wait()
		vm.exitCode = cmd.ProcessState.ExitCode()
		close(vm.done)
	}()

	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), Scale(timeout))
	defer cancel()
	go func() {
		select {
		case <-vm.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	// QEMU waits for each serial socket's client, in order, before it
	// creates the QMP socket.
	for i := 1; i <= opts.Serials; i++ {
		sp, err := dialSerial(ctx, sockDir, dir, i)
		if err != nil {
			vm.Kill()
			return nil, fmt.Errorf("%s: %w; qemu %s; stderr: %s", label(vm.Name), err, vm.exitDescription(), vm.Stderr())
		}
		vm.serials = append(vm.serials, sp)
	}
	q, err := DialQMP(ctx, qmpPath(sockDir))
	if err != nil {
		vm.Kill()
		return nil, fmt.Errorf("%s: %w; qemu %s; stderr: %s", label(vm.Name), err, vm.exitDescription(), vm.Stderr())
	}
	vm.qmp = q
	return vm, nil
}

// label names a VM in messages: "vm" alone, or "vm dh1".
func label(name string) string {
	if name == "vm" {
		return name
	}
	return "vm " + name
}

func qmpPath(dir string) string { return filepath.Join(dir, "qmp.sock") }

// startInNetNS starts cmd from an OS thread switched into the named network
// namespace: the child inherits the thread's namespace, the Go process keeps
// its own.
func startInNetNS(name string, cmd *exec.Cmd) error {
	if name == "" {
		return cmd.Start()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: %w", name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering netns %s: %w", name, err)
			return
		}
		startErr := cmd.Start()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine instead of
			// running other goroutines in the wrong namespace.
			errc <- errors.Join(startErr, fmt.Errorf("restoring netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- startErr
	}()
	return <-errc
}

// Start boots a VM for a test. QEMU is killed when the test ends; if the
// test failed, the console log is copied to the artefact directory and its
// last lines are printed.
func Start(t testing.TB, opts Options) *VM {
	t.Helper()
	dir := t.TempDir()
	vm, err := Launch(opts, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.finish(t) })
	return vm
}

func (vm *VM) finish(t testing.TB) {
	vm.Kill()
	select { // the pump ends at QEMU's exit; wait so the log is complete
	case <-vm.console.Done():
	case <-time.After(5 * time.Second):
	}
	if !t.Failed() {
		return
	}
	dir, err := artifactDir(t.Name())
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	name := ConsoleFile
	if vm.Name != "vm" {
		name = vm.Name + "-" + ConsoleFile
	}
	dst := filepath.Join(dir, name)
	if err == nil {
		err = copyFile(filepath.Join(vm.dir, ConsoleFile), dst)
	}
	for i := range vm.serials {
		if err == nil {
			f := fmt.Sprintf("ttyS%d.log", i+1)
			err = copyFile(filepath.Join(vm.dir, f), strings.TrimSuffix(dst, ConsoleFile)+f)
		}
	}
	if err == nil && vm.Stderr() != "" {
		err = os.WriteFile(strings.TrimSuffix(dst, ConsoleFile)+"qemu-stderr.log", []byte(vm.Stderr()), 0o644)
	}
	if err != nil {
		t.Logf("%s: keeping console log: %v", label(vm.Name), err)
		dst = filepath.Join(vm.dir, ConsoleFile) + " (removed with the test's temp dir)"
	}
	t.Logf("%s: console log: %s; qemu %s; last %d lines:\n%s",
		label(vm.Name), dst, vm.exitDescription(), consoleTailLines, vm.console.Tail(consoleTailLines))
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Expect waits up to timeout (scaled by MAGESTACK_TIMEOUT_SCALE) for pattern
// on the console after the previous match; see Console.Expect.
func (vm *VM) Expect(timeout time.Duration, pattern string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), Scale(timeout))
	defer cancel()
	return vm.ExpectContext(ctx, pattern)
}

// ExpectContext is Expect bounded by ctx instead of a timeout.
func (vm *VM) ExpectContext(ctx context.Context, pattern string) ([]string, error) {
	m, err := vm.console.Expect(ctx, pattern)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", label(vm.Name), vm.annotate(err))
	}
	return m, nil
}

// ExpectNot fails if pattern appears after the previous match within d
// (scaled).
func (vm *VM) ExpectNot(d time.Duration, pattern string) error {
	if err := vm.console.ExpectNot(Scale(d), pattern); err != nil {
		return fmt.Errorf("%s: %w", label(vm.Name), err)
	}
	return nil
}

// annotate adds QEMU's own words when the console ended because QEMU did.
func (vm *VM) annotate(err error) error {
	if !errors.Is(err, ErrConsoleClosed) {
		return err
	}
	select {
	case <-vm.done:
	case <-time.After(2 * time.Second):
	}
	return fmt.Errorf("%w\nqemu %s; stderr: %s", err, vm.exitDescription(), vm.Stderr())
}

// Console returns the console output so far.
func (vm *VM) Console() string { return vm.console.Text() }

// ConsoleLog is the path of the raw console log while the test runs.
func (vm *VM) ConsoleLog() string { return filepath.Join(vm.dir, ConsoleFile) }

// SendConsole types s on the serial console.
func (vm *VM) SendConsole(s string) error {
	if _, err := io.WriteString(vm.stdin, s); err != nil {
		return fmt.Errorf("%s: console input: %w", label(vm.Name), err)
	}
	return nil
}

type serialPort struct {
	conn    net.Conn
	console *Console
}

// dialSerial connects to serial port i's socket (retrying until QEMU
// listens) and pumps it into a Console logged to dir/ttyS<i>.log.
func dialSerial(ctx context.Context, sockDir, dir string, i int) (serialPort, error) {
	var d net.Dialer
	path := serialPath(sockDir, i)
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			log, err := os.Create(filepath.Join(dir, fmt.Sprintf("ttyS%d.log", i)))
			if err != nil {
				conn.Close()
				return serialPort{}, fmt.Errorf("serial ttyS%d log: %w", i, err)
			}
			sp := serialPort{conn: conn, console: NewConsole()}
			go func() {
				sp.console.pump(conn, log)
				log.Close()
			}()
			return sp, nil
		}
		select {
		case <-ctx.Done():
			return serialPort{}, fmt.Errorf("serial ttyS%d: connect %s: %w (last: %v)", i, path, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Serial returns the stream of serial port ttyS<n>: 0 is the console,
// 1..Options.Serials the extra ports. It panics on a port the VM lacks
// (a test bug).
func (vm *VM) Serial(n int) *Console {
	if n == 0 {
		return vm.console
	}
	if n < 1 || n > len(vm.serials) {
		panic(fmt.Sprintf("%s: no serial port ttyS%d (Options.Serials=%d)", label(vm.Name), n, len(vm.serials)))
	}
	return vm.serials[n-1].console
}

// SerialWrite sends s to the guest on ttyS<n> (n >= 1).
func (vm *VM) SerialWrite(n int, s string) error {
	if n < 1 || n > len(vm.serials) {
		return fmt.Errorf("%s: no serial port ttyS%d", label(vm.Name), n)
	}
	if _, err := io.WriteString(vm.serials[n-1].conn, s); err != nil {
		return fmt.Errorf("%s: ttyS%d: %w", label(vm.Name), n, err)
	}
	return nil
}

// QMP returns the VM's QMP client for commands without a helper here.
func (vm *VM) QMP() *QMP { return vm.qmp }

func (vm *VM) qmpDo(f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), Scale(commandTimeout))
	defer cancel()
	if err := f(ctx); err != nil {
		return fmt.Errorf("%s: %w", label(vm.Name), err)
	}
	return nil
}

// SystemPowerdown presses the ACPI power button.
func (vm *VM) SystemPowerdown() error { return vm.qmpDo(vm.qmp.SystemPowerdown) }

// SystemReset resets the machine.
func (vm *VM) SystemReset() error { return vm.qmpDo(vm.qmp.SystemReset) }

// Stop pauses the guest.
func (vm *VM) Stop() error { return vm.qmpDo(vm.qmp.Stop) }

// Cont resumes a paused guest.
func (vm *VM) Cont() error { return vm.qmpDo(vm.qmp.Cont) }

// Quit ends QEMU at once (power cord pulled) and waits for it to exit.
func (vm *VM) Quit() error {
	if err := vm.qmpDo(vm.qmp.Quit); err != nil {
		return err
	}
	_, err := vm.Wait(commandTimeout)
	return err
}

// SetLink plugs (up) or pulls (!up) the cable of the NIC with netdev id id
// (NIC.ID, default net0, net1, ...).
func (vm *VM) SetLink(id string, up bool) error {
	return vm.qmpDo(func(ctx context.Context) error { return vm.qmp.SetLink(ctx, id, up) })
}

// QueryStatus asks QEMU whether the guest runs.
func (vm *VM) QueryStatus() (Status, error) {
	var s Status
	err := vm.qmpDo(func(ctx context.Context) error {
		var err error
		s, err = vm.qmp.QueryStatus(ctx)
		return err
	})
	return s, err
}

// Wait waits up to timeout (scaled) for QEMU to exit and returns its exit
// code (-1 when killed by a signal). It does not kill QEMU on timeout.
func (vm *VM) Wait(timeout time.Duration) (int, error) {
	select {
	case <-vm.done:
		return vm.exitCode, nil
	case <-time.After(Scale(timeout)):
		return -1, fmt.Errorf("%s: still running after %v; console tail:\n%s",
			label(vm.Name), Scale(timeout), vm.console.Tail(consoleTailLines))
	}
}

// Done is closed when QEMU has exited.
func (vm *VM) Done() <-chan struct{} { return vm.done }

// PID is QEMU's process id.
func (vm *VM) PID() int { return vm.cmd.Process.Pid }

// Kill ends QEMU with SIGKILL (hardware lost) if it still runs, waits for
// it and releases the VM's resources. Safe to call more than once.
func (vm *VM) Kill() {
	select {
	case <-vm.done:
	default:
		_ = vm.cmd.Process.Kill()
		<-vm.done
	}
	if vm.qmp != nil {
		vm.qmp.Close()
	}
	if vm.stdin != nil {
		vm.stdin.Close()
	}
	for _, sp := range vm.serials {
		sp.conn.Close()
	}
	os.RemoveAll(vm.sockDir)
}

// Stderr is what QEMU itself printed (errors, warnings).
func (vm *VM) Stderr() string { return strings.TrimSpace(vm.stderr.String()) }

func (vm *VM) exitDescription() string {
	select {
	case <-vm.done:
		if vm.waitErr != nil {
			return fmt.Sprintf("exited: %v", vm.waitErr)
		}
		return "exited with code 0"
	default:
		return "still running"
	}
}

// LockedBuffer collects a background command's output while a test reads it.
type LockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *LockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
