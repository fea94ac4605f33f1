package main

import (
	"context"
	"fmt"
	"time"

	"magestack/init/bootreport"
	"magestack/init/klog"
	"magestack/init/pid1"
)

// Discovery boots: `magestack netboot --discover` boots machines it does not
// know with magestack.discover=<report URL>. Such a machine reports its
// hardware to the boot server and runs nothing else: no firewall changes,
// no roles, until staff add it to the stack file and reboot it.
func init() {
	registerBootSteps(orderAPI-5, "discover", func(b *bootEnv) []pid1.Step {
		if !b.discovering() {
			return nil
		}
		return []pid1.Step{{Name: "discover", Run: b.discoverStep, Timeout: time.Minute,
			Retry: pid1.Retry{Initial: 5 * time.Second, Max: time.Minute}}}
	})
}

// discovering reports whether this is a discovery boot.
func (b *bootEnv) discovering() bool { return b.cmdline.Value("magestack.discover") != "" }

func (b *bootEnv) discoverStep(ctx context.Context) error {
	url := b.cmdline.Value("magestack.discover")
	inv := bootreport.Inventory("/")
	if err := bootreport.Send(ctx, url, bootreport.Report{Host: b.Hostname(), MAC: firstMAC(b), Event: "discovered",
		UptimeMS: klog.UptimeMS(), Hardware: inv}); err != nil {
		return fmt.Errorf("discovery report: %w", err)
	}
	b.klog.Console("magestack: discovery reported to " + url + "; add this machine to the stack file and reboot it")
	return nil
}
