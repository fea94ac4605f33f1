package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"magestack/init/cmdline"
	"magestack/init/pid1"
	"magestack/init/stackfile"
)

func testEnv(line string) *bootEnv {
	return &bootEnv{
		ctx:     context.Background(),
		log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		cmdline: cmdline.Parse(line),
	}
}

func TestHostForMACs(t *testing.T) {
	st := &stackfile.Stack{Hosts: []stackfile.Host{
		{Name: "dh1", MAC: "52:54:00:00:00:01"},
		{Name: "dh2", MAC: "52:54:00:00:00:02"},
	}}
	tests := []struct {
		macs []string
		want string
	}{
		{[]string{"52:54:00:00:00:02"}, "dh2"},
		{[]string{"aa:bb:cc:dd:ee:ff", "52:54:00:00:00:01"}, "dh1"},
		{[]string{"52:54:00:00:00:0A"}, ""},
		{[]string{"52:54:00:00:00:02", "52:54:00:00:00:01"}, "dh2"}, // first MAC (boot NIC) wins
		{nil, ""},
	}
	for _, tt := range tests {
		if got := hostForMACs(st, tt.macs); got != tt.want {
			t.Errorf("hostForMACs(%v) = %q, want %q", tt.macs, got, tt.want)
		}
	}
}

func TestBootMACsPutsBOOTIFFirst(t *testing.T) {
	macs := bootMACs(cmdline.Parse("BOOTIF=01-52-54-00-AB-CD-EF quiet"))
	if len(macs) == 0 || macs[0] != "52:54:00:ab:cd:ef" {
		t.Fatalf("bootMACs = %v, want 52:54:00:ab:cd:ef first", macs)
	}
}

func TestValidHostname(t *testing.T) {
	for _, ok := range []string{"dh1", "web-1.example", "A"} {
		if err := validHostname(ok); err != nil {
			t.Errorf("%q rejected: %v", ok, err)
		}
	}
	for _, bad := range []string{"a b", "dh1;reboot", string(make([]byte, 65))} {
		if err := validHostname(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestTestHooks(t *testing.T) {
	okRun := func(context.Context) error { return nil }
	steps := []pid1.Step{{Name: "mounts", Run: okRun}, {Name: "hostname", Run: okRun}, {Name: "config", Run: okRun}}
	b := testEnv("magestack.test.failstep=hostname:2 magestack.test.panicstep=config magestack.test.fs_request=squashfs")
	got := withTestHooks(b, steps)
	if len(got) != 4 || got[3].Name != "test-fs-request" {
		t.Fatalf("steps = %v, want the fs request step appended", names(got))
	}
	ctx := context.Background()
	if got[0].Run(ctx) != nil {
		t.Error("unhooked step changed")
	}
	for i := 1; i <= 3; i++ {
		err := got[1].Run(ctx)
		if (i <= 2) != (err != nil) {
			t.Errorf("failstep attempt %d: err = %v", i, err)
		}
	}
	err := pid1.Safely(b.log, "config", func() error { return got[2].Run(ctx) })
	if !errors.Is(err, pid1.ErrPanic) {
		t.Errorf("panicstep first attempt: %v, want a recovered panic", err)
	}
	if err := got[2].Run(ctx); err != nil {
		t.Errorf("panicstep second attempt: %v", err)
	}

	always := withTestHooks(testEnv("magestack.test.failstep=mounts:always"), steps)
	for i := 0; i < 5; i++ {
		if always[0].Run(ctx) == nil {
			t.Fatal("failstep :always let an attempt through")
		}
	}
	if n := len(withTestHooks(testEnv("quiet"), steps)); n != 3 {
		t.Errorf("no hooks: %d steps", n)
	}
}

func TestTestSignal(t *testing.T) {
	tests := []struct {
		line string
		sig  unix.Signal
		d    time.Duration
		ok   bool
	}{
		{"magestack.test.signal=TERM@3s", unix.SIGTERM, 3 * time.Second, true},
		{"magestack.test.signal=sigusr2@0s", unix.SIGUSR2, 0, true},
		{"magestack.test.signal=NOPE@1s", 0, 0, false},
		{"magestack.test.signal=TERM", 0, 0, false},
		{"quiet", 0, 0, false},
	}
	for _, tt := range tests {
		sig, d, ok := testSignal(testEnv(tt.line))
		if sig != tt.sig || d != tt.d || ok != tt.ok {
			t.Errorf("%q: %v %v %v", tt.line, sig, d, ok)
		}
	}
}

func TestModprobeArgs(t *testing.T) {
	if code := modprobeMain(nil); code != 2 {
		t.Errorf("no args: exit %d, want 2", code)
	}
	if code := modprobeMain([]string{"-x", "loop"}); code != 2 {
		t.Errorf("unknown option: exit %d, want 2", code)
	}
}

func names(steps []pid1.Step) []string {
	var n []string
	for _, s := range steps {
		n = append(n, s.Name)
	}
	return n
}

func TestInitRefusesWhenNotPID1(t *testing.T) {
	if code := initMain(nil); code != 2 {
		t.Fatalf("initMain as pid %d: exit %d, want 2", unix.Getpid(), code)
	}
}

func TestResidentKiB(t *testing.T) {
	if n := residentKiB(); n <= 0 {
		t.Fatalf("residentKiB = %d", n)
	}
}

func TestLaterStepsFollowOrderNotRegistration(t *testing.T) {
	saved := bootStepProviders
	defer func() { bootStepProviders = saved }()
	bootStepProviders = nil
	step := func(name string) func(*bootEnv) []pid1.Step {
		return func(*bootEnv) []pid1.Step { return []pid1.Step{{Name: name}} }
	}
	registerBootSteps(orderCluster, "cluster", step("cluster"))
	registerBootSteps(orderFirewall, "firewall", step("firewall"))
	registerBootSteps(orderRoles, "roles", step("roles"))
	got := names(laterSteps(testEnv("")))
	if want := []string{"firewall", "roles", "cluster"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("later steps = %v, want %v", got, want)
	}
}
