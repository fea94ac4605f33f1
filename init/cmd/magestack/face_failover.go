package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"magestack/init/api"
	"magestack/init/failover"
)

// failoverMain is `magestack failover --to HOST` (planned move of every role
// to HOST, e.g. before maintenance of its peer) and `magestack failover
// --force` (take over without a witness or fence: the operator vouches the
// peer is off).
func failoverMain(args []string) int {
	fs := flag.NewFlagSet("failover", flag.ContinueOnError)
	to := fs.String("to", "", "move every role instance to this host (planned, shortest blip)")
	force := fs.Bool("force", false, "take over the peer's roles without witness or fence confirmation")
	socket := fs.String("socket", api.DefaultSocket, "control API socket")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if (*to == "") == !*force {
		fmt.Fprintln(os.Stderr, "magestack failover: say --to HOST or --force")
		return 2
	}
	if *force {
		fmt.Fprintln(os.Stderr, "magestack failover --force: this host takes over its peer's roles now. If the peer is in fact running, both serve the same roles and data until it is powered off.")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var rep failover.Reply
	if err := api.NewClient(*socket).Do(ctx, "POST", "/v1/failover", failover.Request{To: *to, Force: *force}, &rep); err != nil {
		fmt.Fprintf(os.Stderr, "magestack failover: %v\n", err)
		return 1
	}
	fmt.Println(rep.Message)
	if rep.Failover != nil {
		for _, e := range rep.Failover.Timeline {
			fmt.Printf("  %s  %s\n", e.At.Format("15:04:05.000"), e.What)
		}
	}
	return 0
}
