package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"magestack/init/cluster"
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
		Interval: stack.Cluster.Heartbeat.D(), Suspect: stack.Cluster.Suspect.D(), Dead: stack.Cluster.Dead.D(), Logger: log})
	if err != nil {
		return fail("%v", err)
	}
	go hb.Run(ctx)
	cfg := conf.Self
	cfg.DataDir = *dataDir
	cfg.Logger = log
	node, err := cluster.Start(cfg)
	if err != nil {
		return fail("%v", err)
	}
	defer node.Shutdown()
	ctl, err := failover.New(failover.Config{Self: clusterconf.WitnessID, Stack: stack, Cluster: node, Peer: hb.Peer,
		Lease: conf.Timing.Lease, Logger: log})
	if err != nil {
		return fail("%v", err)
	}
	// The witness may lead: hosts then ask it for the ownership table
	// before starting an instance, and forward operator requests to it.
	rpcAddr := net.JoinHostPort(hostOf(cfg.Bind), strconv.Itoa(failover.RPCPort))
	if ln, err := net.Listen("tcp", rpcAddr); err != nil {
		log.Error("witness: cluster rpc listener", "addr", rpcAddr, "err", err)
	} else {
		srv := &http.Server{Handler: ctl.RPCHandler(), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
	}
	fmt.Printf("magestack witness: voting for stack %s at %s\n", stack.Name, cfg.Bind)
	ctl.Run(ctx)
	return 0
}
