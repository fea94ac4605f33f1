package roleenv

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"

	"magestack/init/stackfile"
	"magestack/init/supervise"
	"magestack/services"
)

// Adder is what AddHostRoles needs of a supervisor.
type Adder interface {
	Add(spec supervise.Spec) error
}

// AddHostRoles prepares this host for roles (internal bridge with the
// host's address, IPv4 forwarding on, state, log and volume roots) and adds one unit per role
// instance placed on host, in the stack's start order. An instance waits
// (After) only for the instances on this host of the roles its role starts
// after (services.Role.StartAfter: web after db, lb after web); the rest
// start together. StopAll stops them in reverse start order.
//
// PID 1 then runs sup.StartAll and sup.WaitReady(names...) and gives
// opts.ServiceSocket to the API so "web1/http" names reach role-init.
func AddHostRoles(log *slog.Logger, opts Options, stack *stackfile.Stack, host string, sup Adder) ([]*Env, error) {
	opts = opts.withDefaults()
	_, idx, ok := stack.HostByName(host)
	if !ok {
		return nil, fmt.Errorf("roles: host %q is not in stack %s", host, stack.Name)
	}
	gw, err := stack.HostBridgeAddr(idx)
	if err != nil {
		return nil, fmt.Errorf("roles: %w", err)
	}
	if err := EnsureBridge(opts.BridgeNS, opts.Bridge, netip.PrefixFrom(gw, stack.Internal.Bits())); err != nil {
		return nil, fmt.Errorf("roles: %w", err)
	}
	if err := EnableForwarding(opts.BridgeNS); err != nil {
		return nil, fmt.Errorf("roles: %w", err)
	}
	for _, d := range []string{opts.StateRoot, opts.LogRoot, opts.VolumeRoot} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("roles: %w", err)
		}
	}
	insts, err := stack.Instances()
	if err != nil {
		return nil, fmt.Errorf("roles: %w", err)
	}
	var envs []*Env
	for _, in := range insts {
		if in.Host != host {
			continue
		}
		env, err := New(log, opts, stack, idx, in)
		if err != nil {
			return nil, err
		}
		unit := env.Unit()
		unit.After = startAfter(insts, host, in.Role)
		if err := sup.Add(unit); err != nil {
			return nil, fmt.Errorf("roles: %s: %w", in.Name, err)
		}
		envs = append(envs, env)
	}
	return envs, nil
}

// startAfter names the instances on host of the roles role starts after.
func startAfter(insts []stackfile.Instance, host, role string) []string {
	def, _ := services.Lookup(role)
	var after []string
	for _, in := range insts {
		if in.Host == host && slices.Contains(def.StartAfter, in.Role) {
			after = append(after, in.Name)
		}
	}
	return after
}

// Name is the instance's name (the unit's name).
func (e *Env) Name() string { return e.inst.Name }
