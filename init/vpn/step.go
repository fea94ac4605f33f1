package vpn

import (
	"context"
	"log/slog"

	"magestack/init/stackfile"
	"magestack/init/stacksecret"
)

// UpForStack is PID 1's VPN step: load the wireguard module (when load is
// given), resolve the stack's vpn section (key from the stack file or
// derived from the stack secret) and bring ms-vpn up
// in the current network namespace with the configured peers. Run it after
// the firewall step, so the listen port is already filtered.
func UpForStack(ctx context.Context, stack *stackfile.Stack, secret stacksecret.Secret, log *slog.Logger, load ...func(ctx context.Context, name string) error) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, l := range load {
		if err := l(ctx, "wireguard"); err != nil {
			log.Warn("vpn: wireguard module did not load", "err", err)
		}
	}
	cfg, err := FromStack(stack, secret)
	if err != nil {
		return err
	}
	if err := Up(cfg, -1); err != nil {
		return err
	}
	log.Info("vpn up", "iface", cfg.Iface, "port", cfg.Port, "address", cfg.HostAddr, "peers", len(cfg.Peers), "public_key", cfg.PublicKey().String())
	return nil
}
