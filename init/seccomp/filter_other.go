//go:build !amd64

package seccomp

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Program is the default filter for this architecture: none yet.
func Program() ([]unix.SockFilter, error) {
	return nil, fmt.Errorf("seccomp: no default filter for %s", runtime.GOARCH)
}
