package main

import (
	"context"
	"fmt"

	"magestack/init/datadisk"
)

// diskStep mounts the host's persistent disk at /var/lib/magestack (raft
// state, the last good stack file, role volumes), preparing a blank disk on
// first boot. Without one the host keeps its state in memory and says so.
func (b *bootEnv) diskStep(ctx context.Context) error {
	if isMountPoint(stateDir) {
		return nil
	}
	disks, err := datadisk.List("/")
	if err != nil {
		return fmt.Errorf("listing disks: %w", err)
	}
	dev, prepare, err := datadisk.Find(disks)
	if err != nil {
		b.log.Warn("disk: state kept in memory only (lost at reboot)", "why", err)
		return nil
	}
	if prepare {
		if err := b.loadModule(ctx, "ext4"); err != nil {
			b.log.Warn("disk: ext4 module", "err", err)
		}
		var size int64
		for _, d := range disks {
			if d.Dev == dev {
				size = d.Size
			}
		}
		b.log.Info("disk: preparing a blank disk for magestack's state", "device", dev)
		if dev, err = datadisk.Prepare(dev, size, b.log); err != nil {
			return fmt.Errorf("preparing %s: %w", dev, err)
		}
	}
	if err := b.loadModule(ctx, "ext4"); err != nil {
		b.log.Warn("disk: ext4 module", "err", err)
	}
	if err := datadisk.Mount(dev, stateDir); err != nil {
		return err
	}
	b.log.Info("disk: state on the data disk", "device", dev, "mount", stateDir)
	return nil
}
