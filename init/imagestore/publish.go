package imagestore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Publish makes dir an image root for roleenv (Options.ImageRoot): a
// symlink <name>.squashfs to each verified image, plus a link to every
// entry of fallback (the images built into the initramfs, such as the
// busybox tree) that no verified image shadows. Links of images no longer
// verified are removed; each link is replaced atomically, so a role
// starting meanwhile sees the old image or the new one.
func (s *Store) Publish(dir, fallback string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("publish images: %w", err)
	}
	want := map[string]string{} // link name -> target
	if fallback != "" {
		ents, err := os.ReadDir(fallback)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("publish images: %w", err)
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), ".") {
				want[e.Name()] = filepath.Join(fallback, e.Name())
			}
		}
	}
	s.mu.RLock()
	for name, im := range s.images {
		want[name+".squashfs"] = im.Path
		delete(want, name) // a tree of the same name would never be chosen; keep it simple
	}
	s.mu.RUnlock()
	for name, target := range want {
		p := filepath.Join(dir, name)
		if cur, err := os.Readlink(p); err == nil && cur == target {
			continue
		}
		tmp := filepath.Join(dir, ".new-"+name)
		os.Remove(tmp)
		if err := os.Symlink(target, tmp); err != nil {
			return fmt.Errorf("publish image %s: %w", name, err)
		}
		if err := os.Rename(tmp, p); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("publish image %s: %w", name, err)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("publish images: %w", err)
	}
	for _, e := range ents {
		if _, ok := want[e.Name()]; !ok && e.Type()&os.ModeSymlink != 0 {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("publish images: %w", err)
			}
		}
	}
	return nil
}
