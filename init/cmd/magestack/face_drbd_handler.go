package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"magestack/init/api"
)

// drbdHandlerLink is the name the kernel's DRBD module executes for its
// handlers (its usermode_helper): a link to this binary, whose name picks
// the drbd-handler face.
const drbdHandlerLink = "/run/magestack/drbd-handler"

// drbdHandlerMain is DRBD's usermode helper: the kernel runs it as
// `drbd-handler <event> minor-<n>` with DRBD_MINOR set. fence-peer asks
// PID 1 to record the peer's copy as outdated in the cluster and answers
// 4 (peer outdated) once it is; anything else answers 1, which leaves the
// Primary's writes frozen: better than acknowledging writes the cluster
// does not know the peer lacks. split-brain and the other events are
// reported to PID 1's log.
func drbdHandlerMain(args []string) int {
	if len(args) < 1 {
		fmt.Fprintln(os.Stderr, "usage: drbd-handler <event> minor-<n> (run by the kernel's DRBD module)")
		return 1
	}
	event := args[0]
	// Connection events (fence-peer) name the resource, device events the
	// minor: DRBD_RESOURCE / DRBD_MINOR, and "<resource>" or "minor-<n>"
	// as the second argument.
	req := volumeEventRequest{Event: event, Minor: -1, Resource: os.Getenv("DRBD_RESOURCE")}
	if n, err := strconv.Atoi(os.Getenv("DRBD_MINOR")); err == nil {
		req.Minor = n
	}
	if len(args) > 1 {
		if n, err := strconv.Atoi(strings.TrimPrefix(args[1], "minor-")); err == nil && strings.HasPrefix(args[1], "minor-") {
			req.Minor = n
		} else if req.Resource == "" {
			req.Resource = args[1]
		}
	}
	if req.Minor < 0 && req.Resource == "" {
		fmt.Fprintf(os.Stderr, "drbd-handler %s: neither a resource nor a minor\n", event)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := api.NewClient(api.DefaultSocket).Do(ctx, "POST", "/v1/volumes/event", req, nil); err != nil {
		// The kernel drops the helper's output: its log is the console.
		if kmsg, kerr := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); kerr == nil {
			fmt.Fprintf(kmsg, "magestack drbd-handler: %s %s: %v\n", event, req.Resource, err)
			kmsg.Close()
		}
		return 1
	}
	if event == "fence-peer" {
		return 4 // DRBD: the peer's disk is outdated
	}
	return 0
}

// volumeEventRequest is what the handler tells PID 1.
type volumeEventRequest struct {
	Event    string `json:"event"`
	Resource string `json:"resource,omitempty"` // ms-<instance>
	Minor    int    `json:"minor"`              // -1: unknown
}
