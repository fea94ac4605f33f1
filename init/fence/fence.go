// Package fence powers a lost host off before its peer takes over its roles
// in a pair without a witness, and reads the power state back: a fence only
// counts once the device confirms the machine is off (an IPMI or Redfish BMC
// that lost power with its host answers nothing, which is not "off").
package fence

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Device is a host's fence device.
type Device interface {
	// PowerOff asks for an immediate, ungraceful power off.
	PowerOff(ctx context.Context) error
	// PoweredOff reports whether the device confirms the machine is off;
	// an error means it could not tell.
	PoweredOff(ctx context.Context) (bool, error)
	String() string
}

// ErrUnconfirmed means the device never confirmed power off.
var ErrUnconfirmed = errors.New("fence: power off not confirmed")

// Fence powers d off and polls until the device confirms, within timeout.
func Fence(ctx context.Context, d Device, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if off, err := d.PoweredOff(ctx); err == nil && off {
		return nil
	}
	if err := d.PowerOff(ctx); err != nil {
		return fmt.Errorf("fence %s: power off: %w", d, err)
	}
	var last error
	for {
		off, err := d.PoweredOff(ctx)
		if err == nil && off {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("fence %s: %w within %v (last error: %v)", d, ErrUnconfirmed, timeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// New makes the device for a stack file fence entry.
func New(typ, address, user, password string) (Device, error) {
	switch typ {
	case "redfish":
		return NewRedfish(address, user, password)
	case "qmp":
		return NewQMP(address)
	case "ipmi":
		return NewIPMI(address, user, password)
	}
	return nil, fmt.Errorf("fence type %q: want redfish, ipmi or qmp", typ)
}
