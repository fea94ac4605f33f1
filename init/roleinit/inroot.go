package roleinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// writeInRoot writes data to path inside root, resolving every component
// as if root were "/" (openat2 RESOLVE_IN_ROOT): a symlink in the image,
// even an absolute one or one full of "..", can never send the write (or
// a directory it creates) onto the host's filesystem. A symlink as the
// last component is refused outright.
func writeInRoot(root, path string, data []byte, mode os.FileMode) error {
	rel := strings.TrimPrefix(filepath.Clean("/"+path), "/")
	if rel == "" {
		return errors.New("empty path")
	}
	rootFD, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open root %s: %w", root, err)
	}
	defer unix.Close(rootFD)
	if err := mkdirAllIn(rootFD, filepath.Dir(rel)); err != nil {
		return err
	}
	fd, err := unix.Openat2(rootFD, rel, &unix.OpenHow{
		Flags:   unix.O_WRONLY | unix.O_CREAT | unix.O_TRUNC | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Mode:    uint64(mode.Perm()),
		Resolve: inRoot,
	})
	if errors.Is(err, unix.ELOOP) {
		return errors.New("is a symlink in the image")
	}
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return err
	}
	// The mode given to open is masked by the umask; the file's must be
	// exact (a 0600 secret, a 0755 script).
	return f.Chmod(mode.Perm())
}

// inRoot resolves a path as if the root descriptor were "/": "..",
// absolute symlinks and magic links cannot leave it.
const inRoot = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

// mkdirAllIn creates the missing directories of dir (relative to rootFD,
// resolved inside it), 0755, one component at a time.
func mkdirAllIn(rootFD int, dir string) error {
	if dir == "." {
		return nil
	}
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: inRoot}
	parts := strings.Split(dir, "/")
	for i := range parts {
		prefix := strings.Join(parts[:i+1], "/")
		fd, err := unix.Openat2(rootFD, prefix, how)
		if errors.Is(err, unix.ENOENT) {
			parent := "."
			if i > 0 {
				parent = strings.Join(parts[:i], "/")
			}
			pfd, perr := unix.Openat2(rootFD, parent, how)
			if perr != nil {
				return fmt.Errorf("directory %s: %w", parent, perr)
			}
			err = unix.Mkdirat(pfd, parts[i], 0o755)
			unix.Close(pfd)
			if err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("mkdir %s: %w", prefix, err)
			}
			fd, err = unix.Openat2(rootFD, prefix, how)
		}
		if err != nil {
			return fmt.Errorf("directory %s: %w", prefix, err)
		}
		unix.Close(fd)
	}
	return nil
}
