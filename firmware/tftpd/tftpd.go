// Package tftpd serves boot files (undionly.kpxe, ipxe.efi) read-only over
// TFTP. Only the files it was given by name are served, whatever a request
// asks for: names that climb directories, absolute paths, anything else is
// refused without touching the file system. (Debian's /usr/lib/ipxe holds
// symlinks into /boot, so confining requests to a directory would refuse
// the very files to serve.)
package tftpd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path"
	"strings"
	"time"

	"github.com/pin/tftp/v3"
)

// Server is a read-only TFTP server of a fixed set of files.
type Server struct {
	files map[string]string // served name → path on this machine
	srv   *tftp.Server
	log   *slog.Logger
	// OnTransfer is told of every completed or failed transfer.
	onTransfer func(remote net.IP, file string, err error)
}

// New serves files: each served name (e.g. "ipxe.efi") maps to a file on
// this machine, which must exist and be regular now.
func New(files map[string]string, log *slog.Logger, onTransfer func(remote net.IP, file string, err error)) (*Server, error) {
	served := map[string]string{}
	for name, p := range files {
		clean, err := CleanName(name)
		if err != nil {
			return nil, fmt.Errorf("tftp: %w", err)
		}
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("tftp: %s: %w", name, err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("tftp: %s: %s is not a regular file", name, p)
		}
		served[clean] = p
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{files: served, log: log, onTransfer: onTransfer}
	s.srv = tftp.NewServer(s.read, nil)
	s.srv.SetTimeout(2 * time.Second)
	s.srv.SetRetries(5)
	s.srv.SetBlockSize(1468) // fits a 1500-byte MTU; clients ask with blksize
	s.srv.SetHook(hook{s})
	return s, nil
}

// CleanName maps a requested file name to a path inside the root, or fails
// for names that try to leave it. PXE ROMs send names with or without a
// leading slash, so one is accepted.
func CleanName(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, 0) || len(name) > 255 {
		return "", fmt.Errorf("bad file name %q", name)
	}
	name = strings.ReplaceAll(name, "\\", "/")
	rel := strings.TrimPrefix(name, "/")
	for _, part := range strings.Split(rel, "/") {
		if part == ".." {
			return "", fmt.Errorf("file name %q climbs out of the boot directory", name)
		}
	}
	clean := path.Clean(rel)
	// Only one leading slash is the ROM's: "//x" would still be absolute
	// here (found by FuzzCleanName).
	if clean == "." || strings.HasPrefix(clean, "../") || path.IsAbs(clean) {
		return "", fmt.Errorf("bad file name %q", name)
	}
	return clean, nil
}

func (s *Server) read(name string, rf io.ReaderFrom) error {
	remote := net.IP(nil)
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		ra := ot.RemoteAddr()
		remote = ra.IP
	}
	clean, err := CleanName(name)
	if err != nil {
		s.log.Warn("tftp: refused", "from", remote, "file", name, "err", err)
		s.report(remote, name, err)
		return err
	}
	path, ok := s.files[clean]
	if !ok {
		err := fmt.Errorf("%s: file not found", clean)
		s.log.Warn("tftp: refused", "from", remote, "file", name, "err", err)
		s.report(remote, name, err)
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		s.log.Warn("tftp: cannot open a served file", "file", clean, "path", path, "err", err)
		s.report(remote, name, err)
		return fmt.Errorf("%s: %w", clean, errors.Unwrap(err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", clean)
		s.report(remote, name, err)
		return err
	}
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		ot.SetSize(st.Size())
	}
	_, err = rf.ReadFrom(f)
	return err
}

func (s *Server) report(remote net.IP, file string, err error) {
	if s.onTransfer != nil {
		s.onTransfer(remote, file, err)
	}
}

type hook struct{ s *Server }

func (h hook) OnSuccess(st tftp.TransferStats) {
	h.s.log.Info("tftp: sent", "to", st.RemoteAddr, "file", st.Filename, "duration", st.Duration)
	h.s.report(st.RemoteAddr, st.Filename, nil)
}

func (h hook) OnFailure(st tftp.TransferStats, err error) {
	h.s.log.Warn("tftp: transfer failed", "to", st.RemoteAddr, "file", st.Filename, "err", err)
}

// Serve serves on conn until ctx ends.
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			s.srv.Shutdown()
		case <-done:
		}
	}()
	err := s.srv.Serve(conn)
	close(done)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
