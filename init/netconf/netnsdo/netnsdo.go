// Package netnsdo runs a function with the calling goroutine's OS thread
// inside another network namespace, and switches back afterwards.
//
// Sockets (netlink, packet, UDP) keep the namespace they were created in, so
// code that opens its sockets inside Run can use them from any goroutine.
package netnsdo

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Run calls fn inside the network namespace at path (e.g. /run/netns/x or
// /proc/<pid>/ns/net). An empty path runs fn in the caller's namespace.
func Run(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()

	// setns(2) changes only this OS thread: pin the goroutine to it.
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime then discards it when the
		// goroutine exits instead of reusing a thread in the wrong namespace.
		return fmt.Errorf("return from network namespace %s: %w", path, err)
	}
	runtime.UnlockOSThread()
	return fnErr
}
