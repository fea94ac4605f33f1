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

	"magestack/init/cluster"
	"magestack/init/clusterauth"
	"magestack/init/clusterconf"
	"magestack/init/failover"
	"magestack/init/heartbeat"
	"magestack/init/stackfile"
)

// witnessMain runs the pair's tie-breaker vote: a raft voter with heartbeats
// to every paired host, which runs no roles. Any third machine can run it.
func witnessMain(args []string) int {
	fs := flag.NewFlagSet("witness", flag.ContinueOnError)
	stackPath := fs.String("stack", "", "stack file (required): its witness: entry says where to listen")
	dataDir := fs.String("data", "/var/lib/magestack/witness", `raft state directory ("" keeps it in memory)`)
	credsPath := fs.String("credentials", "", "the witness's cluster credentials (required; `magestack secrets member witness` makes them)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "magestack witness: "+format+"\n", a...)
		return 1
	}
	if *stackPath == "" {
		fs.Usage()
		return fail("--stack is required")
	}
	if *credsPath == "" {
		fs.Usage()
		return fail("--credentials is required: the hosts refuse a witness that cannot prove it is a member; " +
			"make its file where the stack secret is kept with `magestack secrets member witness -secret FILE -o witness.pem`")
	}
	creds, err := witnessCredentials(*credsPath)
	if err != nil {
		return fail("%v", err)
	}
	data, err := os.ReadFile(*stackPath)
	if err != nil {
		return fail("%v", err)
	}
	stack, err := stackfile.Parse(*stackPath, data)
	if err != nil {
		return fail("the stack file does not validate:\n%v", err)
	}
	if stack.Witness == "" {
		return fail("%s has no witness: entry", *stackPath)
	}
	conf, err := clusterconf.For(stack, clusterconf.WitnessID)
	if err != nil {
		return fail("%v", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	hb, err := heartbeat.New(heartbeat.Config{ID: clusterconf.WitnessID, Paths: conf.Paths,
		Interval: stack.Cluster.Heartbeat.D(), Suspect: stack.Cluster.Suspect.D(), Dead: stack.Cluster.Dead.D(), Logger: log,
		Key: creds.HeartbeatKey()})
	if err != nil {
		return fail("%v", err)
	}
	go hb.Run(ctx)
	cfg := conf.Self
	cfg.DataDir = *dataDir
	cfg.Logger = log
	cfg.ServerTLS = creds.ServerConfig(conf.IDs())
	cfg.ClientTLS = creds.ClientConfig(conf.IDs(), "")
	node, err := cluster.Start(cfg)
	if err != nil {
		return fail("%v", err)
	}
	defer node.Shutdown()
	ctl, err := failover.New(failover.Config{Self: clusterconf.WitnessID, Stack: stack, Cluster: node, Peer: hb.Peer,
		Lease: conf.Timing.Lease, Logger: log, Credentials: creds})
	if err != nil {
		return fail("%v", err)
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
	return 0
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
