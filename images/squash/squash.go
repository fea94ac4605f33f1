// Package squash packs an image tree into a read-only squashfs file, the
// form role images take on a host (one file, mounted through a loop device
// by role-init). Packing runs mksquashfs from Debian's squashfs-tools: this
// is build tooling, never part of the magestack binary.
package squash

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
)

// Make writes tree as a squashfs image to out (replacing it). Every file is
// owned by root inside, whatever the builder's uid.
func Make(tree, out string) error {
	bin, err := exec.LookPath("mksquashfs")
	if err != nil {
		return fmt.Errorf("squashfs %s: mksquashfs not found (install Debian's squashfs-tools): %w", out, err)
	}
	if fi, err := os.Stat(tree); err != nil || !fi.IsDir() {
		return fmt.Errorf("squashfs %s: tree %s is not a directory (%v)", out, tree, err)
	}
	if err := os.Remove(out); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("squashfs %s: %w", out, err)
	}
	cmd := exec.Command(bin, tree, out, "-noappend", "-all-root", "-comp", "gzip", "-quiet", "-no-progress")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("squashfs %s: mksquashfs: %w: %s", out, err, b)
	}
	return nil
}
