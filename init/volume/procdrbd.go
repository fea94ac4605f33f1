package volume

import (
	"bufio"
	"io"
	"strconv"
	"strings"
)

// State is what the kernel says of one DRBD minor (/proc/drbd, DRBD 8.4).
type State struct {
	Minor      int     `json:"minor"`
	Connection string  `json:"connection"`           // Connected, StandAlone, WFConnection, SyncSource...
	Role       string  `json:"role"`                 // Primary, Secondary
	PeerRole   string  `json:"peer_role"`            // Primary, Secondary, Unknown
	Disk       string  `json:"disk"`                 // UpToDate, Inconsistent, Outdated, Diskless...
	PeerDisk   string  `json:"peer_disk"`            // UpToDate, DUnknown...
	OutOfSync  int64   `json:"out_of_sync_kib"`      // data the peer lacks (or this side, as SyncTarget)
	Sent       int64   `json:"sent_kib"`             // sent to the peer since attach (ns)
	Received   int64   `json:"received_kib"`         // received from the peer since attach (nr)
	Synced     float64 `json:"synced_pct,omitempty"` // resync progress while syncing
	Finish     string  `json:"finish,omitempty"`     // resync ETA h:mm:ss
	// Frozen: DRBD holds this copy's I/O (the flag after the protocol
	// letter is "s"): a Primary that lost its peer waits for the fence
	// handler's verdict, or waits on after the handler failed.
	Frozen bool `json:"io_frozen,omitempty"`
}

// InSync reports whether both copies are connected and UpToDate.
func (s State) InSync() bool {
	return s.Connection == "Connected" && s.Disk == "UpToDate" && s.PeerDisk == "UpToDate"
}

// Syncing reports whether a resync is running.
func (s State) Syncing() bool {
	return strings.HasPrefix(s.Connection, "Sync") || strings.HasPrefix(s.Connection, "PausedSync")
}

// parseProcDRBD reads /proc/drbd's per-minor blocks; unconfigured minors
// are left out.
func parseProcDRBD(r io.Reader) (map[int]State, error) {
	out := map[int]State{}
	cur := -1
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if n, ok := strings.CutSuffix(f[0], ":"); ok {
			if m, err := strconv.Atoi(n); err == nil {
				cur = -1
				st := State{Minor: m}
				for _, kv := range f[1:] {
					k, v, _ := strings.Cut(kv, ":")
					switch k {
					case "cs":
						st.Connection = v
					case "ro":
						st.Role, st.PeerRole, _ = strings.Cut(v, "/")
					case "ds":
						st.Disk, st.PeerDisk, _ = strings.Cut(v, "/")
					default:
						// The state flags: I/O running (r) or suspended
						// (s), then five one-letter flags.
						if len(kv) == 6 && (kv[0] == 'r' || kv[0] == 's') && !strings.Contains(kv, ":") {
							st.Frozen = kv[0] == 's'
						}
					}
				}
				if st.Connection != "" && st.Connection != "Unconfigured" {
					out[m] = st
					cur = m
				}
				continue
			}
		}
		if cur < 0 {
			continue
		}
		st := out[cur]
		switch {
		case strings.HasPrefix(line, "ns:"):
			for _, kv := range f {
				k, v, _ := strings.Cut(kv, ":")
				n, _ := strconv.ParseInt(v, 10, 64)
				switch k {
				case "ns":
					st.Sent = n
				case "nr":
					st.Received = n
				case "oos":
					st.OutOfSync = n
				}
			}
		case strings.Contains(line, "sync'ed:"):
			_, after, _ := strings.Cut(line, "sync'ed:")
			if p := strings.Fields(after); len(p) > 0 {
				st.Synced, _ = strconv.ParseFloat(strings.TrimSuffix(p[0], "%"), 64)
			}
		case strings.HasPrefix(line, "finish:") && len(f) > 1:
			st.Finish = f[1]
		}
		out[cur] = st
	}
	return out, sc.Err()
}
