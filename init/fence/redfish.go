package fence

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Redfish fences through a BMC's Redfish service: ComputerSystem.Reset with
// ResetType ForceOff, then PowerState read back from the system resource.
type Redfish struct {
	base     *url.URL
	user     string
	password string
	client   *http.Client
	system   string // resolved system path, e.g. /redfish/v1/Systems/1
}

// NewRedfish takes the BMC's base URL (https://bmc.example).
func NewRedfish(address, user, password string) (*Redfish, error) {
	u, err := url.Parse(address)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("redfish address %q: want https://host[:port]", address)
	}
	return &Redfish{base: u, user: user, password: password, client: &http.Client{Timeout: 5 * time.Second}}, nil
}

func (r *Redfish) String() string { return "redfish " + r.base.Host }

func (r *Redfish) do(ctx context.Context, method, path string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	u := r.base.ResolveReference(&url.URL{Path: path})
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return err
	}
	req.SetBasicAuth(r.user, r.password)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: bad JSON: %w", method, path, err)
		}
	}
	return nil
}

// systemPath finds the first ComputerSystem.
func (r *Redfish) systemPath(ctx context.Context) (string, error) {
	if r.system != "" {
		return r.system, nil
	}
	var coll struct {
		Members []struct {
			ID string `json:"@odata.id"`
		} `json:"Members"`
	}
	if err := r.do(ctx, http.MethodGet, "/redfish/v1/Systems", nil, &coll); err != nil {
		return "", err
	}
	if len(coll.Members) == 0 {
		return "", fmt.Errorf("redfish: no computer system listed")
	}
	r.system = coll.Members[0].ID
	return r.system, nil
}

// PowerOff sends ForceOff to the system's reset action.
func (r *Redfish) PowerOff(ctx context.Context) error {
	sys, err := r.systemPath(ctx)
	if err != nil {
		return err
	}
	return r.do(ctx, http.MethodPost, sys+"/Actions/ComputerSystem.Reset", map[string]string{"ResetType": "ForceOff"}, nil)
}

// PoweredOff reads PowerState.
func (r *Redfish) PoweredOff(ctx context.Context) (bool, error) {
	sys, err := r.systemPath(ctx)
	if err != nil {
		return false, err
	}
	var s struct {
		PowerState string `json:"PowerState"`
	}
	if err := r.do(ctx, http.MethodGet, sys, nil, &s); err != nil {
		return false, err
	}
	return s.PowerState == "Off", nil
}
