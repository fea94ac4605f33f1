package netboot

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/u-root/u-root/pkg/cpio"

	"magestack/images/manifest"
	"magestack/init/bootreport"
	"magestack/init/stackfile"
)

// maxReport bounds what a host may POST to /report.
const maxReport = 64 << 10

// imageFiles are the only files served under /image/; anything else is 404,
// so no request path reaches the file system.
var imageFiles = []string{"vmlinuz", "initramfs.img"}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /boot/{file}", s.serveScript)
	mux.HandleFunc("GET /image/{file}", s.serveImage)
	mux.HandleFunc("GET /images/{file}", s.serveRoleImage)
	mux.HandleFunc("GET /secret/{file}", s.serveSecret)
	mux.HandleFunc("GET /stack.yaml", s.serveStack)
	mux.HandleFunc("POST /report", s.serveReport)
	mux.HandleFunc("GET /status", s.serveStatus)
	return mux
}

func clientMAC(r *http.Request, s *Server) string {
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	return s.macForIP(host)
}

// serveScript answers /boot/<mac>.ipxe with the host's boot script.
func (s *Server) serveScript(w http.ResponseWriter, r *http.Request) {
	file := r.PathValue("file")
	macText, ok := strings.CutSuffix(file, ".ipxe")
	mac, err := net.ParseMAC(macText)
	if !ok || err != nil {
		http.Error(w, "want /boot/<mac>.ipxe", http.StatusNotFound)
		return
	}
	script, host, ok := s.scriptFor(mac)
	if !ok {
		s.log.Warn("netboot: script refused: unknown MAC", "mac", mac.String(), "from", r.RemoteAddr)
		http.Error(w, "unknown host", http.StatusNotFound)
		return
	}
	s.progress.Step(mac.String(), host, "script", r.RemoteAddr)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	io.WriteString(w, script)
}

// macFile is the name a host's secret initrd is served under.
func macFile(mac net.HardwareAddr) string {
	return strings.ReplaceAll(mac.String(), ":", "-") + ".cpio"
}

// knownCaller is the stack file's host behind the request's address (this
// server's leases, else the ARP table) and its MAC, or why there is none.
func (s *Server) knownCaller(r *http.Request) (stackfile.Host, net.HardwareAddr, error) {
	mac, err := net.ParseMAC(clientMAC(r, s))
	if err != nil {
		return stackfile.Host{}, nil, errors.New("no MAC known for the caller's address")
	}
	h, _, known := lookupMAC(s.stack, mac)
	if !known {
		return stackfile.Host{}, nil, fmt.Errorf("%s is not a host of the stack", mac)
	}
	return h, mac, nil
}

// serveSecret answers /secret/<mac>.cpio with the stack secret as a cpio
// initrd, only to a host the stack file knows and only from the address
// this server's DHCP gave that MAC. That binds the secret to a lease, not to
// the machine: a stranger able to take a known host's MAC on the
// provisioning LAN can still ask for it (docs/security.md).
func (s *Server) serveSecret(w http.ResponseWriter, r *http.Request) {
	if !s.secret.Valid() {
		http.NotFound(w, r)
		return
	}
	macText, ok := strings.CutSuffix(r.PathValue("file"), ".cpio")
	mac, err := net.ParseMAC(strings.ReplaceAll(macText, "-", ":"))
	if !ok || err != nil {
		http.Error(w, "want /secret/<mac>.cpio", http.StatusNotFound)
		return
	}
	h, caller, err := s.knownCaller(r)
	if err == nil && caller.String() != mac.String() {
		err = fmt.Errorf("asks for %s's secret", mac)
	}
	if err != nil {
		s.log.Warn("netboot: secret refused", "mac", mac.String(), "from", r.RemoteAddr, "err", err)
		http.Error(w, "refused", http.StatusForbidden)
		return
	}
	body, err := secretInitrd(s.secret.Marshal(s.stack.Name))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	s.progress.Step(mac.String(), h.Name, "secret", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(body)
}

// secretInitrd is an uncompressed newc archive holding the secret where a
// host looks for it (/etc/magestack/stack.secret, root-only).
func secretInitrd(secret []byte) ([]byte, error) {
	var buf bytes.Buffer
	cw := cpio.Newc.Writer(&buf)
	recs := []cpio.Record{
		cpio.Directory("etc", 0o755),
		cpio.Directory("etc/magestack", 0o700),
		cpio.StaticRecord(secret, cpio.Info{Name: "etc/magestack/stack.secret", Mode: cpio.S_IFREG | 0o600}),
	}
	if err := cpio.WriteRecords(cw, recs); err != nil {
		return nil, fmt.Errorf("secret initrd: %w", err)
	}
	if err := cpio.WriteTrailer(cw); err != nil {
		return nil, fmt.Errorf("secret initrd: %w", err)
	}
	return buf.Bytes(), nil
}

func (s *Server) serveImage(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	known := false
	for _, f := range imageFiles {
		known = known || f == name
	}
	if !known {
		http.NotFound(w, r)
		return
	}
	f, err := os.Open(filepath.Join(s.opts.ImageDir, name))
	if err != nil {
		s.log.Error("netboot: image file missing", "file", name, "err", err)
		http.Error(w, "image file missing on the boot server", http.StatusInternalServerError)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		http.Error(w, "image file unreadable", http.StatusInternalServerError)
		return
	}
	step := "kernel"
	if name == "initramfs.img" {
		step = "initramfs"
	}
	if mac := clientMAC(r, s); mac != "" {
		s.progress.Step(mac, "", step, fmt.Sprintf("%d bytes", st.Size()))
	}
	// ETag from size and mtime lets iPXE and caches revalidate; ServeContent
	// handles Range and If-None-Match.
	w.Header().Set("ETag", fmt.Sprintf(`"%x-%x"`, st.Size(), st.ModTime().UnixNano()))
	w.Header().Set("Cache-Control", "public, max-age=60")
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, name, st.ModTime(), f)
}

// checkRoleImages reads the role images' manifest and checks that every
// file it lists is there at its size (digests are the hosts' to verify:
// hashing every image at each start would take long).
func (s *Server) checkRoleImages() error {
	if s.opts.RoleImageDir == "" {
		return errors.New("no role image directory given")
	}
	m, err := manifest.Read(s.opts.RoleImageDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, im := range m.Images {
		st, err := os.Stat(filepath.Join(s.opts.RoleImageDir, im.File))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("image %s: %w", im.Name, err))
		case st.Size() != im.Size:
			errs = append(errs, fmt.Errorf("image %s: %s is %d bytes, the manifest says %d", im.Name, im.File, st.Size(), im.Size))
		}
	}
	return errors.Join(errs...)
}

// serveRoleImage answers /images/manifest.json and /images/<file> for the
// files the manifest lists (nothing else: no request path reaches the file
// system). The manifest is read per request, so rebuilt images are served
// without a restart; an image's ETag is its digest, so a host resuming a
// download (Range + If-Range) of a file that changed meanwhile gets it whole.
func (s *Server) serveRoleImage(w http.ResponseWriter, r *http.Request) {
	if s.imagesURL == "" {
		http.Error(w, "this boot server serves no role images (--images)", http.StatusNotFound)
		return
	}
	name := r.PathValue("file")
	m, err := manifest.Read(s.opts.RoleImageDir)
	if err != nil {
		s.log.Error("netboot: role image manifest unreadable", "err", err)
		http.Error(w, "role image manifest unreadable on the boot server", http.StatusInternalServerError)
		return
	}
	if name == manifest.FileName {
		b, err := m.Marshal()
		if err != nil {
			http.Error(w, "role image manifest invalid on the boot server", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(b)
		return
	}
	var im manifest.Image
	for _, c := range m.Images {
		if c.File == name {
			im = c
		}
	}
	if im.File == "" {
		http.NotFound(w, r)
		return
	}
	f, err := os.Open(filepath.Join(s.opts.RoleImageDir, im.File))
	if err != nil {
		s.log.Error("netboot: role image missing", "image", im.Name, "err", err)
		http.Error(w, "role image missing on the boot server", http.StatusInternalServerError)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() != im.Size {
		s.log.Error("netboot: role image does not match its manifest", "image", im.Name, "file", im.File, "want_bytes", im.Size)
		http.Error(w, "role image "+im.Name+" does not match its manifest on the boot server", http.StatusInternalServerError)
		return
	}
	s.log.Info("netboot: role image requested", "image", im.Name, "file", im.File, "from", r.RemoteAddr, "range", r.Header.Get("Range"))
	if mac := clientMAC(r, s); mac != "" {
		host := ""
		if hw, err := net.ParseMAC(mac); err == nil {
			if h, _, ok := lookupMAC(s.stack, hw); ok {
				host = h.Name
			}
		}
		s.progress.Step(mac, host, "images", fmt.Sprintf("%s %d bytes", im.File, im.Size))
	}
	w.Header().Set("ETag", `"sha256:`+im.SHA256+`"`)
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, im.File, st.ModTime(), f)
}

// serveStack answers the stack file to the hosts it names only: it holds
// the fence devices' credentials. As for the secret, the caller is known
// by the MAC behind its address (this server's leases, else the ARP
// table), which binds the file to the LAN's addressing, not to a machine.
func (s *Server) serveStack(w http.ResponseWriter, r *http.Request) {
	if _, _, err := s.knownCaller(r); err != nil {
		s.log.Warn("netboot: stack file refused", "from", r.RemoteAddr, "err", err)
		http.Error(w, "refused: the stack file is served to the stack's hosts only", http.StatusForbidden)
		return
	}
	w.Header().Set("Content-Type", "application/yaml")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(s.stackYAML)
}

func (s *Server) serveReport(w http.ResponseWriter, r *http.Request) {
	// The host side (init/bootreport) defines the report.
	var rep bootreport.Report
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxReport))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		http.Error(w, "bad report: "+err.Error(), http.StatusBadRequest)
		return
	}
	mac, err := net.ParseMAC(rep.MAC)
	if err != nil {
		http.Error(w, "bad report: mac: "+err.Error(), http.StatusBadRequest)
		return
	}
	switch rep.Event {
	case "ready":
		s.progress.Step(mac.String(), rep.Host, "ready", fmt.Sprintf("uptime_ms=%d", rep.UptimeMS))
	case "discovered":
		s.progress.Update(mac.String(), func(h *HostProgress) { h.Hardware = rep.Hardware })
		hw, _ := json.Marshal(rep.Hardware)
		s.log.Info("netboot: discovered machine", "mac", mac, "hardware", string(hw))
		s.progress.Step(mac.String(), "", "discovered", string(hw))
	case "error":
		s.progress.Update(mac.String(), func(h *HostProgress) { h.Error = rep.Error })
		s.progress.Step(mac.String(), rep.Host, "error", rep.Error)
	default:
		http.Error(w, fmt.Sprintf("bad report: event %q: want ready, discovered or error", rep.Event), http.StatusBadRequest)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) serveStatus(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(s.progress.Snapshot())
}

func newHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}
