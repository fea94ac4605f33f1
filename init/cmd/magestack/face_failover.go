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
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	client := api.NewClient(*socket)
	if *force {
		fmt.Fprintln(os.Stderr, "magestack failover --force: this host takes over its peer's roles now. If the peer is in fact running, both serve the same roles and data until it is powered off.")
		self, _ := os.Hostname()
		for _, line := range forceRisks(self, volumesOf(ctx, client)) {
			fmt.Fprintln(os.Stderr, "  "+line)
		}
	}
	var rep failover.Reply
	if err := client.Do(ctx, "POST", "/v1/failover", failover.Request{To: *to, Force: *force}, &rep); err != nil {
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

// volumesOf is the volumes section of this host's status (nil when there
// is none or PID 1 does not answer: the takeover itself then says why).
func volumesOf(ctx context.Context, c *api.Client) []volumeStatus {
	st, err := c.Status(ctx)
	if err != nil {
		return nil
	}
	vols, _ := statusVolumes(st)
	return vols
}

// forceRisks says, per replicated volume, what a forced takeover on host
// self keeps and may lose. Without the peer and the witness this host cannot
// know whether the peer went on writing after the two last saw each other
// in sync (it may, once the cluster recorded this copy as outdated where
// this host could not see it), so it names that moment.
func forceRisks(self string, vols []volumeStatus) []string {
	var out []string
	for _, v := range vols {
		switch {
		case v.Peer == "":
			continue
		case v.Outdated == self:
			out = append(out, fmt.Sprintf("%s: stays down: the cluster records this host's copy as outdated (the peer wrote without it); "+
				"`magestack volumes accept-outdated %s --yes` starts it, losing those writes", v.Name, v.Name))
		case v.Connection == "Connected":
			out = append(out, fmt.Sprintf("%s: the peer's copy is still connected (the peer is up): DRBD lets only one host write; nothing is lost", v.Name))
		case v.Disk != "UpToDate":
			out = append(out, fmt.Sprintf("%s: stays down: this host's copy is %s, not a complete copy to start from", v.Name, orDash(v.Disk)))
		case v.InSyncUntil.IsZero():
			out = append(out, fmt.Sprintf("%s: starts from this host's copy; both copies were not seen in sync since this host started, "+
				"so writes the peer acknowledged before that may be missing", v.Name))
		default:
			out = append(out, fmt.Sprintf("%s: starts from this host's copy, which has every write up to %s UTC (both copies last seen in sync); "+
				"writes the peer acknowledged after that are lost (it made some only if it kept running and recorded this copy as outdated)",
				v.Name, v.InSyncUntil.UTC().Format("2006-01-02 15:04:05")))
		}
	}
	return out
}
