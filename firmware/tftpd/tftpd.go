// Package tftpd serves boot files (undionly.kpxe, ipxe.efi) read-only over
// TFTP, confined to one directory: paths that climb out of it, absolute
// paths and symlinks leading elsewhere are refused.
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

// Server is a read-only TFTP server over one directory.
type Server struct {
	root *os.Root
	srv  *tftp.Server
	log  *slog.Logger
	// OnTransfer is told of every completed or failed transfer.
	onTransfer func(remote net.IP, file string, err error)
}

// New opens dir as the server's root.
func New(dir string, log *slog.Logger, onTransfer func(remote net.IP, file string, err error)) (*Server, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("tftp root %s: %w", dir, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{root: root, log: log, onTransfer: onTransfer}
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
	if clean == "." || strings.HasPrefix(clean, "../") {
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
	f, err := s.root.Open(clean)
	if err != nil {
		s.log.Warn("tftp: refused", "from", remote, "file", name, "err", err)
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
	s.root.Close()
	if ctx.Err() != nil {
		return nil
	}
	return err
}
