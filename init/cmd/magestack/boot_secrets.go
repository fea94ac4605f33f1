package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"magestack/init/clusterauth"
	"magestack/init/pid1"
	"magestack/init/stacksecret"
)

// providedSecret is where a host finds the stack secret it was booted with
// (an initramfs file; netboot adds one for known hosts) unless
// magestack.secrets= names another path.
const providedSecret = "/etc/magestack/stack.secret"

func init() {
	// After the config (the stack's name and hosts decide whether this
	// host may make a secret) and before the VPN and roles, which derive
	// their keys and passwords from it.
	registerBootSteps(orderFirewall-2, "secrets", func(b *bootEnv) []pid1.Step {
		if b.discovering() {
			return nil
		}
		return []pid1.Step{{Name: "secrets", Critical: true, Run: b.secretsStep, Timeout: 10 * time.Second,
			Retry: pid1.Retry{Initial: 5 * time.Second, Max: time.Minute}}}
	})
}

// keptSecretPath is the host's own copy of the stack secret: on the data
// disk when there is one (it outlives reboots), else in memory.
func keptSecretPath() string {
	if isMountPoint(stateDir) {
		return filepath.Join(stateDir, "secrets", "stack.secret")
	}
	return "/run/magestack/secrets/stack.secret"
}

// secretsStep finds the stack secret every derived password, certificate
// and key comes from. Only the host of a one-host stack may make one; a host
// of a larger stack that has none waits for one rather than make its own,
// which would disagree with the other hosts' (web on one host could not log
// in to db on another; the certificate and VPN key would change on failover).
func (b *bootEnv) secretsStep(ctx context.Context) error {
	st := b.Stack()
	if st == nil {
		return errors.New("no stack config yet")
	}
	provided := b.cmdline.Value("magestack.secrets")
	if provided == "" {
		provided = providedSecret
	}
	kept := keptSecretPath()
	s, src, err := stacksecret.Locate(kept, provided, st.Name, len(st.Hosts) <= 1)
	if errors.Is(err, stacksecret.ErrMissing) {
		return fmt.Errorf("stack %s has %d hosts and this host has no copy of its stack secret (looked in %s and %s): "+
			"boot it with the stack's secret file (`magestack secrets init` makes one; netboot hands it to known hosts); "+
			"roles wait until it is here", st.Name, len(st.Hosts), kept, provided)
	}
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.secret, b.secretSource = s, src
	b.mu.Unlock()
	b.log.Info("secrets: stack secret in place", "id", s.ID(), "source", string(src), "kept", kept)
	return nil
}

// stackSecret is the stack secret once the secrets step found it (the zero
// Secret before).
func (b *bootEnv) stackSecret() stacksecret.Secret {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.secret
}

// clusterCredentials are this host's cluster member credentials, derived
// from the stack secret: without them no other member would let it speak
// raft, the cluster RPC or heartbeats.
func (b *bootEnv) clusterCredentials(host string) (*clusterauth.Credentials, error) {
	sec := b.stackSecret()
	if !sec.Valid() {
		return nil, errors.New("cluster: no stack secret on this host yet (see the secrets boot step): " +
			"its cluster credentials derive from it")
	}
	c, err := clusterauth.Derive(sec, host)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	return c, nil
}

// secretStatus is the status API's view: which secret (its public ID) and
// where it came from, never the secret itself.
func (b *bootEnv) secretStatus(context.Context) (any, error) {
	b.mu.Lock()
	s, src := b.secret, b.secretSource
	b.mu.Unlock()
	if !s.Valid() {
		return nil, errors.New("no stack secret yet (see the secrets boot step)")
	}
	return map[string]string{"id": s.ID(), "source": string(src)}, nil
}

// secretsOf hands the renderer the stack secret at render time, so role
// options made before the secrets step succeeded still render with it, and
// a role rendered without it fails with the reason instead of a made-up
// password.
type secretsOf struct{ b *bootEnv }

func (s secretsOf) current() (stacksecret.Secret, error) {
	sec := s.b.stackSecret()
	if !sec.Valid() {
		return sec, errors.New("no stack secret on this host yet (see the secrets boot step)")
	}
	return sec, nil
}

func (s secretsOf) Secret(name string) (string, error) {
	sec, err := s.current()
	if err != nil {
		return "", err
	}
	return sec.Secret(name)
}

func (s secretsOf) SelfSigned(name string, hosts []string) (string, string, error) {
	sec, err := s.current()
	if err != nil {
		return "", "", err
	}
	return sec.SelfSigned(name, hosts)
}
