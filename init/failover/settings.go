package failover

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"magestack/init/stackfile"
)

// The cluster settings there are. Every other key is refused: a setting
// reaches every member's behaviour (which instances exist, when failover
// may act, what a site serves), so only the shapes the product writes may
// be committed.
const (
	// MaintenancePrefix, followed by a site's group/name, is the site's
	// maintenance switch: "on", or "" to clear it.
	MaintenancePrefix = "maintenance/"
	// MaintenanceOn is the value of a switched-on maintenance setting.
	MaintenanceOn = "on"
	// OutdatedPrefix, followed by an instance name, records whose copy of
	// the instance's volume is outdated: the host named in the value, which
	// the owner wrote without (DRBD resource-level fencing). That host may
	// not promote its copy; "" clears it once the copies are in sync.
	OutdatedPrefix = "volume-outdated/"
)

// Bounds of a setting.
const (
	maxSettingKey = 200
	// maxInstancesValue bounds the instance list: about 40 bytes an
	// instance, so thousands of instances fit.
	maxInstancesValue = 48 << 10
	maxInstances      = 1000
	// maxFutureMove is how far ahead of the leader's clock a recorded move
	// may be: a move is recorded when it happens, so more is a forged
	// hold-down (the "far-future time" that silently disabled
	// failover).
	maxFutureMove = time.Minute
)

var (
	// siteDirRE is a site's group or name, as the stack file allows them.
	siteDirRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	// hostRE is a host name, as the stack file allows it.
	hostRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	// instanceRE is an instance name: a role and its number.
	instanceRE = regexp.MustCompile(`^[a-z]{1,32}[1-9][0-9]{0,3}$`)
)

// ErrBadSetting is wrapped by every refused setting.
var ErrBadSetting = errors.New("refused setting")

// CheckSetting says whether key may be set to value on a cluster of
// stack st at now: a known key, with a value of its shape and size. ""
// (clearing) is valid for every known key except the instance list.
func CheckSetting(st *stackfile.Stack, key, value string, now time.Time) error {
	if len(key) > maxSettingKey {
		return fmt.Errorf("%w: key of %d bytes", ErrBadSetting, len(key))
	}
	switch {
	case strings.HasPrefix(key, MaintenancePrefix):
		return checkMaintenance(key, value)
	case strings.HasPrefix(key, lastMoveKey):
		return checkLastMove(st, key, value, now)
	case key == InstancesKey:
		_, err := ParseInstances(st, value)
		return err
	case strings.HasPrefix(key, OutdatedPrefix):
		return checkOutdated(st, key, value)
	}
	return fmt.Errorf("%w: unknown key %q (known: %s<group>/<name>, %s<host>, %s, %s<instance>)",
		ErrBadSetting, key, MaintenancePrefix, lastMoveKey, InstancesKey, OutdatedPrefix)
}

func checkOutdated(st *stackfile.Stack, key, value string) error {
	if inst := strings.TrimPrefix(key, OutdatedPrefix); !instanceRE.MatchString(inst) {
		return fmt.Errorf("%w: %q: want %s<instance>", ErrBadSetting, key, OutdatedPrefix)
	}
	if value == "" {
		return nil
	}
	if _, _, ok := st.HostByName(value); !hostRE.MatchString(value) || !ok {
		return fmt.Errorf("%w: %s: %q is not a host of stack %s", ErrBadSetting, key, value, st.Name)
	}
	return nil
}

func checkMaintenance(key, value string) error {
	group, name, ok := strings.Cut(strings.TrimPrefix(key, MaintenancePrefix), "/")
	if !ok || !validSiteDir(group) || !validSiteDir(name) {
		return fmt.Errorf("%w: %q: want %s<group>/<name> of a site", ErrBadSetting, key, MaintenancePrefix)
	}
	if value != "" && value != MaintenanceOn {
		return fmt.Errorf("%w: %s: value %q, want %q or empty", ErrBadSetting, key, value, MaintenanceOn)
	}
	return nil
}

func validSiteDir(s string) bool { return siteDirRE.MatchString(s) && !strings.Contains(s, "..") }

func checkLastMove(st *stackfile.Stack, key, value string, now time.Time) error {
	host := strings.TrimPrefix(key, lastMoveKey)
	if !hostRE.MatchString(host) {
		return fmt.Errorf("%w: %q: want %s<host>", ErrBadSetting, key, lastMoveKey)
	}
	if _, _, ok := st.HostByName(host); !ok {
		return fmt.Errorf("%w: %s: no host %q in stack %s", ErrBadSetting, key, host, st.Name)
	}
	if value == "" {
		return nil
	}
	t, err := time.Parse(time.RFC3339Nano, value)
	if err != nil || len(value) > 40 {
		return fmt.Errorf("%w: %s: value %q is not an RFC 3339 time", ErrBadSetting, key, value)
	}
	if t.After(now.Add(maxFutureMove)) {
		return fmt.Errorf("%w: %s: %s is in the future (it would hold failover off)", ErrBadSetting, key, value)
	}
	return nil
}

// ParseInstances reads and checks an InstancesKey value: a JSON list of
// instances, each once, each placed on a host of st, never empty (a stack
// always has instances; an empty list would stop every one of them).
func ParseInstances(st *stackfile.Stack, value string) ([]PlacedInstance, error) {
	if len(value) > maxInstancesValue {
		return nil, fmt.Errorf("%w: %s: %d bytes, at most %d", ErrBadSetting, InstancesKey, len(value), maxInstancesValue)
	}
	var list []PlacedInstance
	if err := decodeStrict(strings.NewReader(value), &list); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadSetting, InstancesKey, err)
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("%w: %s: an empty instance list would stop every instance of the stack", ErrBadSetting, InstancesKey)
	}
	if len(list) > maxInstances {
		return nil, fmt.Errorf("%w: %s: %d instances, at most %d", ErrBadSetting, InstancesKey, len(list), maxInstances)
	}
	seen := map[string]bool{}
	for _, in := range list {
		if !instanceRE.MatchString(in.Name) {
			return nil, fmt.Errorf("%w: %s: instance name %q", ErrBadSetting, InstancesKey, in.Name)
		}
		if seen[in.Name] {
			return nil, fmt.Errorf("%w: %s: %s listed twice", ErrBadSetting, InstancesKey, in.Name)
		}
		seen[in.Name] = true
		if _, _, ok := st.HostByName(in.Host); !ok {
			return nil, fmt.Errorf("%w: %s: %s placed on %q, not a host of stack %s", ErrBadSetting, InstancesKey, in.Name, in.Host, st.Name)
		}
	}
	return list, nil
}

// decodeStrict decodes exactly one JSON value of v's type from r: no
// unknown fields, nothing after it.
func decodeStrict(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); err != io.EOF {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// settingRequest is a forwarded POST /v1/setting.
type settingRequest struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// maxSettingBody bounds a forwarded setting's body: the largest value
// JSON-escaped, plus the key.
const maxSettingBody = 2*maxInstancesValue + 1024

// decodeSetting reads a forwarded setting and checks it.
func decodeSetting(st *stackfile.Stack, body []byte, now time.Time) (settingRequest, error) {
	var in settingRequest
	if err := decodeStrict(bytes.NewReader(body), &in); err != nil {
		return settingRequest{}, fmt.Errorf("bad setting request: %w", err)
	}
	if err := CheckSetting(st, in.Key, in.Value, now); err != nil {
		return settingRequest{}, err
	}
	return in, nil
}

// ErrForceRemote refuses a forced takeover asked for over the network.
var ErrForceRemote = errors.New("failover --force is never accepted over the network: " +
	"run `magestack failover --force` on the console of the host that should take over (it reaches that host's API socket)")

// maxFailoverBody bounds a forwarded failover request.
const maxFailoverBody = 1024

// decodeRemoteFailover reads a failover request forwarded by another
// member: a planned move to a host of the stack, never a forced takeover.
func decodeRemoteFailover(st *stackfile.Stack, body []byte) (Request, error) {
	var r Request
	if err := decodeStrict(bytes.NewReader(body), &r); err != nil {
		return Request{}, fmt.Errorf("bad failover request: %w", err)
	}
	if r.Force {
		return Request{}, ErrForceRemote
	}
	if r.To == "" {
		return Request{}, errors.New("bad failover request: no host to move to")
	}
	if !hostRE.MatchString(r.To) {
		return Request{}, fmt.Errorf("bad failover request: %q is not a host name", r.To)
	}
	if _, _, ok := st.HostByName(r.To); !ok {
		return Request{}, fmt.Errorf("bad failover request: no host %q in stack %s", r.To, st.Name)
	}
	return r, nil
}
