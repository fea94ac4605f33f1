package configsource

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
)

// sshGitServer is a minimal SSH server on loopback that runs the real
// git-upload-pack for "exec" requests, authenticating one client key.
type sshGitServer struct {
	ln      net.Listener
	hostKey ssh.Signer
	wg      sync.WaitGroup
}

func newSSHGitServer(t *testing.T, clientKey ssh.PublicKey) *sshGitServer {
	t.Helper()
	if _, err := exec.LookPath("git-upload-pack"); err != nil {
		t.Skip("git-upload-pack not installed")
	}
	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	hostKey, err := ssh.NewSignerFromKey(hostPriv)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if string(k.Marshal()) == string(clientKey.Marshal()) {
				return nil, nil
			}
			return nil, fmt.Errorf("unknown key")
		},
	}
	cfg.AddHostKey(hostKey)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &sshGitServer{ln: ln, hostKey: hostKey}
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() { defer s.wg.Done(); s.serve(c, cfg) }()
		}
	}()
	return s
}

func (s *sshGitServer) serve(c net.Conn, cfg *ssh.ServerConfig) {
	defer c.Close()
	_, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "session only")
			continue
		}
		ch, chReqs, err := nc.Accept()
		if err != nil {
			return
		}
		go func() {
			defer ch.Close()
			for req := range chReqs {
				if req.Type != "exec" {
					req.Reply(false, nil)
					continue
				}
				n := binary.BigEndian.Uint32(req.Payload[:4])
				line := string(req.Payload[4 : 4+n])
				cmd, arg, _ := strings.Cut(line, " ")
				if cmd != "git-upload-pack" {
					req.Reply(false, nil)
					return
				}
				req.Reply(true, nil)
				run := exec.Command("git-upload-pack", strings.Trim(arg, "'"))
				run.Stdin, run.Stdout, run.Stderr = ch, ch, ch.Stderr()
				status := 0
				if err := run.Run(); err != nil {
					status = 1
				}
				ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, uint32(status)))
				return
			}
		}()
	}
}

func TestFetchGitSSH(t *testing.T) {
	g := newGitFixture(t)
	id := g.commit(map[string]string{"shop1.yaml": "stack: shop1\n"})

	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	sshPub, _ := ssh.NewPublicKey(pub)
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := newSSHGitServer(t, sshPub)
	addr := srv.ln.Addr().(*net.TCPAddr)
	hostPattern := fmt.Sprintf("[127.0.0.1]:%d", addr.Port)
	good := filepath.Join(dir, "known_hosts")
	os.WriteFile(good, []byte(hostPattern+" "+string(ssh.MarshalAuthorizedKey(srv.hostKey.PublicKey()))), 0o644)
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	other, _ := ssh.NewSignerFromKey(otherPriv)
	bad := filepath.Join(dir, "known_hosts.bad")
	os.WriteFile(bad, []byte(hostPattern+" "+string(ssh.MarshalAuthorizedKey(other.PublicKey()))), 0o644)
	empty := filepath.Join(dir, "known_hosts.empty")
	os.WriteFile(empty, nil, 0o644)

	source := fmt.Sprintf("git+ssh://git@127.0.0.1:%d%s#main:shop1.yaml", addr.Port, g.bare)
	ctx := context.Background()
	rev, err := New(Options{SSHKey: keyFile, KnownHosts: []string{good}}).Fetch(ctx, source)
	if err != nil {
		t.Fatal(err)
	}
	if rev.ID != id || string(rev.Data) != "stack: shop1\n" {
		t.Errorf("got %s %q", rev.ID, rev.Data)
	}
	if _, err := New(Options{SSHKey: keyFile, KnownHosts: []string{bad}}).Fetch(ctx, source); err == nil || !strings.Contains(err.Error(), "key mismatch") {
		t.Errorf("changed host key accepted: %v", err)
	}
	if _, err := New(Options{SSHKey: keyFile, KnownHosts: []string{empty}}).Fetch(ctx, source); err == nil || !strings.Contains(err.Error(), "key is unknown") {
		t.Errorf("unknown host key accepted: %v", err)
	}
}
