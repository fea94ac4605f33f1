package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"magestack/init/cluster"
	"magestack/init/clusterauth"
	"magestack/init/clusterconf"
	"magestack/init/failover"
	"magestack/init/firewall"
	"magestack/init/heartbeat"
	"magestack/init/stackfile"
	"magestack/services"
)

const witnessUsage = `usage: magestack witness --stack FILE --credentials FILE [--data DIR] [--firewall=false]

The tie-breaker vote for a pair: a raft voter with heartbeats to every
paired host, which runs no roles. Run it on a third machine (a systemd
unit ships as init/dist/magestack-witness.service).

While it runs it keeps its own nftables table, inet magestack_witness:
its cluster ports (raft, heartbeats, cluster RPC) accept the stack's
hosts (hosts[].address) only. The rest of the machine's ruleset is left
alone; the table is removed on a clean stop. Pass --firewall=false on a
machine whose operator manages nftables, and open those ports to the
hosts only there.

SIGTERM or SIGINT stops it in order (raft shut down, listeners closed)
within 40 s; a second signal, or a stop that overruns that bound,
exits at once with status 1.

flags:
`

// witnessStopBound is how long a clean stop may take after SIGTERM: raft's
// own shutdown is bounded at 5 s and the failover loop's final pass at
// 30 s; a service manager must never need SIGKILL.
const witnessStopBound = 40 * time.Second

// witnessExit ends the process when a stop overruns (tests replace it).
var witnessExit = os.Exit

// witnessOpts are the witness's flags.
type witnessOpts struct {
	stack, data, credentials string
	firewall                 bool
}

func witnessFlagSet(o *witnessOpts) *flag.FlagSet {
	fs := flag.NewFlagSet("witness", flag.ContinueOnError)
	fs.StringVar(&o.stack, "stack", "", "stack file (required): its witness: entry says where to listen")
	fs.StringVar(&o.data, "data", "/var/lib/magestack/witness", `raft state directory ("" keeps it in memory)`)
	fs.StringVar(&o.credentials, "credentials", "", "the witness's cluster credentials file (required; made by: magestack secrets member witness -secret FILE -o FILE)")
	fs.BoolVar(&o.firewall, "firewall", true, "apply the witness's nftables table (cluster ports from the hosts only); false when the machine's operator manages nftables")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), witnessUsage)
		fs.PrintDefaults()
	}
	return fs
}

// witnessMain runs the pair's tie-breaker vote: a raft voter with heartbeats
// to every paired host, which runs no roles. Any third machine can run it.
func witnessMain(args []string) int {
	var opts witnessOpts
	fs := witnessFlagSet(&opts)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	stackPath, dataDir, withFirewall := &opts.stack, &opts.data, &opts.firewall
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "magestack witness: "+format+"\n", a...)
		return 1
	}
	if *stackPath == "" {
		fs.Usage()
		return fail("--stack is required")
	}
	if opts.credentials == "" {
		fs.Usage()
		return fail("--credentials is required: the hosts refuse a witness that cannot prove it is a member; " +
			"make its file where the stack secret is kept with `magestack secrets member witness -secret FILE -o witness.pem`")
	}
	creds, err := witnessCredentials(opts.credentials)
	if err != nil {
		return fail("%v", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	// Signals first: a stop asked for while raft starts must not kill the
	// process halfway (and must not be lost).
	ctx, release := witnessSignals(log)
	defer release()

	stack, conf, err := loadWitnessStack(*stackPath)
	if err != nil {
		return fail("%v", err)
	}
	if *withFirewall {
		remove, err := applyWitnessFirewall(ctx, stack, conf.Self.Bind, log)
		if err != nil {
			return fail("%v\n(on a machine whose nftables you manage yourself, run with --firewall=false and open the cluster ports to the hosts only)", err)
		}
		defer remove()
	} else {
		log.Warn("witness: --firewall=false: the cluster ports are open to whatever this machine's own ruleset allows")
	}
	if err := runWitness(ctx, stack, conf, creds, *dataDir, log); err != nil {
		return fail("%v", err)
	}
	log.Info("witness: stopped")
	return 0
}

// loadWitnessStack reads and validates the stack file and the witness's
// cluster settings from it.
func loadWitnessStack(path string) (*stackfile.Stack, clusterconf.Member, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, clusterconf.Member{}, err
	}
	stack, err := stackfile.Parse(path, data)
	if err != nil {
		return nil, clusterconf.Member{}, fmt.Errorf("the stack file does not validate:\n%w", err)
	}
	if stack.Witness == "" {
		return nil, clusterconf.Member{}, fmt.Errorf("%s has no witness: entry", path)
	}
	conf, err := clusterconf.For(stack, clusterconf.WitnessID)
	if err != nil {
		return nil, clusterconf.Member{}, err
	}
	return stack, conf, nil
}

// witnessSignals returns a context cancelled by the first SIGTERM or
// SIGINT. A second signal, or a stop still running witnessStopBound later,
// exits the process with status 1.
func witnessSignals(log *slog.Logger) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-sigc:
			log.Info("witness: stopping", "signal", s.String())
			cancel()
		case <-done:
			return
		}
		select {
		case s := <-sigc:
			log.Error("witness: second signal, exiting without a clean stop", "signal", s.String())
		case <-time.After(witnessStopBound):
			log.Error("witness: clean stop overran, exiting", "bound", witnessStopBound)
		case <-done:
			return
		}
		witnessExit(1)
	}()
	return ctx, func() {
		close(done)
		signal.Stop(sigc)
		cancel()
	}
}

// witnessPorts are the witness's cluster ports: raft where the stack's
// witness: entry says, heartbeats and the cluster RPC at their fixed ports.
func witnessPorts(bind string) ([]services.Port, error) {
	_, p, err := net.SplitHostPort(bind)
	if err != nil {
		return nil, fmt.Errorf("witness address %q: %w", bind, err)
	}
	raft, err := strconv.ParseUint(p, 10, 16)
	if err != nil || raft == 0 {
		return nil, fmt.Errorf("witness address %q: bad port", bind)
	}
	return []services.Port{
		{Proto: "tcp", Port: uint16(raft), Name: "raft"},
		{Proto: "udp", Port: clusterconf.HeartbeatPort, Name: "heartbeat"},
		{Proto: "tcp", Port: failover.RPCPort, Name: "cluster-rpc"},
	}, nil
}

// applyWitnessFirewall loads the witness's table and returns what removes
// it on a clean stop.
func applyWitnessFirewall(ctx context.Context, stack *stackfile.Stack, bind string, log *slog.Logger) (func(), error) {
	ports, err := witnessPorts(bind)
	if err != nil {
		return nil, err
	}
	rs, err := firewall.BuildWitness(stack, ports)
	if err != nil {
		return nil, err
	}
	fw := firewall.New()
	if err := fw.Apply(ctx, rs); err != nil {
		fw.Close()
		return nil, fmt.Errorf("witness firewall: %w", err)
	}
	log.Info("witness: firewall applied", "table", "inet "+firewall.WitnessTable, "ports", ports)
	return func() {
		defer fw.Close()
		// A fresh context: the run's own is cancelled by now.
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := fw.RemoveTable(rctx, firewall.WitnessTable); err != nil {
			log.Warn("witness: firewall table left in place", "err", err)
			return
		}
		log.Info("witness: firewall removed", "table", "inet "+firewall.WitnessTable)
	}, nil
}

// runWitness votes until ctx ends, then shuts raft and the listeners down.
func runWitness(ctx context.Context, stack *stackfile.Stack, conf clusterconf.Member, creds *clusterauth.Credentials, dataDir string, log *slog.Logger) error {
	hb, err := heartbeat.New(heartbeat.Config{ID: clusterconf.WitnessID, Paths: conf.Paths,
		Interval: stack.Cluster.Heartbeat.D(), Suspect: stack.Cluster.Suspect.D(), Dead: stack.Cluster.Dead.D(), Logger: log,
		Key: creds.HeartbeatKey()})
	if err != nil {
		return err
	}
	go hb.Run(ctx)
	cfg := conf.Self
	cfg.DataDir = dataDir
	cfg.Logger = log
	cfg.ServerTLS = creds.ServerConfig(conf.IDs())
	cfg.ClientTLS = creds.ClientConfig(conf.IDs(), "")
	node, err := cluster.Start(cfg)
	if err != nil {
		return err
	}
	defer func() {
		if err := node.Shutdown(); err != nil {
			log.Warn("witness: raft shutdown", "err", err)
		}
	}()
	ctl, err := failover.New(failover.Config{Self: clusterconf.WitnessID, Stack: stack, Cluster: node, Peer: hb.Peer,
		Lease: conf.Timing.Lease, Logger: log, Credentials: creds})
	if err != nil {
		return err
	}
	// The witness may lead: hosts then ask it for the ownership table
	// before starting an instance, and forward operator requests to it.
	rpcAddr := net.JoinHostPort(hostOf(cfg.Bind), strconv.Itoa(failover.RPCPort))
	go func() {
		if err := ctl.ServeRPC(ctx, rpcAddr); err != nil {
			log.Error("witness: cluster rpc listener", "addr", rpcAddr, "err", err)
		}
	}()
	fmt.Printf("magestack witness: voting for stack %s at %s (stack id %s)\n", stack.Name, cfg.Bind, creds.StackID())
	ctl.Run(ctx)
	return nil
}

// witnessCredentials loads the witness's credentials file and checks it
// was made for the witness.
func witnessCredentials(path string) (*clusterauth.Credentials, error) {
	c, err := clusterauth.Load(path)
	if err != nil {
		return nil, err
	}
	if c.Member() != clusterconf.WitnessID {
		return nil, fmt.Errorf("%s: credentials of member %q, not of the %s (make them with `magestack secrets member %s`)",
			path, c.Member(), clusterconf.WitnessID, clusterconf.WitnessID)
	}
	return c, nil
}
