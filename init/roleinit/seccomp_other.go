//go:build !amd64

package roleinit

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

func seccompProgram() ([]unix.SockFilter, error) {
	return nil, fmt.Errorf("seccomp: no default filter for %s", runtime.GOARCH)
}
