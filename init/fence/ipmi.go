package fence

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/chassis"
	"github.com/bougou/go-ipmi/pkg/types"
)

// ipmiPort is IPMI over LAN's standard UDP port (RMCP).
const ipmiPort = 623

// IPMI fences through a BMC's IPMI-over-LAN (RMCP+, IPMI 2.0) interface:
// Chassis Control "power down" (immediate, not the ACPI soft-off), then
// Get Chassis Status read back until it says power is off. A BMC that does
// not answer proves nothing (it may have lost power with its host).
type IPMI struct {
	host     string
	port     int
	user     string
	password string

	mu sync.Mutex
	// suite is the RMCP+ cipher suite the BMC accepted last, tried first:
	// each refused suite costs a full timeout, and a fence polls.
	suite types.CipherSuiteID
}

// ipmiSuites are the RMCP+ cipher suites offered, strongest first: 17
// (HMAC-SHA256, AES-128) and 3 (HMAC-SHA1, AES-128), which every BMC in
// service speaks; the rest are weaker or rare.
var ipmiSuites = []types.CipherSuiteID{types.CipherSuiteID17, types.CipherSuiteID3}

// NewIPMI takes the BMC's host[:port] (port 623 by default).
func NewIPMI(address, user, password string) (*IPMI, error) {
	host, port := address, ipmiPort
	if h, p, err := net.SplitHostPort(address); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 || n > 65535 {
			return nil, fmt.Errorf("ipmi address %q: bad port %q", address, p)
		}
		host, port = h, n
	}
	if host == "" {
		return nil, fmt.Errorf("ipmi address %q: want host or host:port", address)
	}
	if user == "" {
		return nil, fmt.Errorf("ipmi %s: a user is required (RMCP+ has no anonymous power control)", address)
	}
	return &IPMI{host: host, port: port, user: user, password: password}, nil
}

func (d *IPMI) String() string { return "ipmi " + net.JoinHostPort(d.host, strconv.Itoa(d.port)) }

// session runs f in one RMCP+ session, bounded by ctx (or 10 s). It asks
// for operator privilege, all that chassis control needs.
func (d *IPMI) session(ctx context.Context, f func(context.Context, *client.Client) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	d.mu.Lock()
	suites := ipmiSuites
	if d.suite != 0 {
		suites = append([]types.CipherSuiteID{d.suite}, ipmiSuites...)
	}
	d.mu.Unlock()
	var c *client.Client
	var errs []string
	for _, suite := range suites {
		cl, err := client.NewClient(d.host, d.port, d.user, d.password)
		if err != nil {
			return fmt.Errorf("%s: %w", d, err)
		}
		cl.WithInterface(client.InterfaceLanplus).WithTimeout(time.Second).WithRetry(2).
			WithCipherSuiteID(suite).WithMaxPrivilegeLevel(types.PrivilegeLevelOperator)
		if err := cl.Connect(ctx); err != nil {
			errs = append(errs, fmt.Sprintf("cipher suite %d: %s", suite, strings.Join(strings.Fields(err.Error()), " ")))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		d.mu.Lock()
		d.suite = suite
		d.mu.Unlock()
		c = cl
		break
	}
	if c == nil {
		return fmt.Errorf("%s: no session (%s)", d, strings.Join(errs, "; "))
	}
	defer c.Close(context.WithoutCancel(ctx))
	return f(ctx, c)
}

// PowerOff sends Chassis Control power down.
func (d *IPMI) PowerOff(ctx context.Context) error {
	return d.session(ctx, func(ctx context.Context, c *client.Client) error {
		if _, err := c.ChassisControl(ctx, chassis.ChassisControlPowerDown); err != nil {
			return fmt.Errorf("%s: chassis power down: %w", d, err)
		}
		return nil
	})
}

// PoweredOff reads the chassis power state.
func (d *IPMI) PoweredOff(ctx context.Context) (bool, error) {
	var on bool
	err := d.session(ctx, func(ctx context.Context, c *client.Client) error {
		st, err := c.GetChassisStatus(ctx)
		if err != nil {
			return fmt.Errorf("%s: chassis status: %w", d, err)
		}
		on = st.PowerIsOn
		return nil
	})
	return err == nil && !on, err
}
