package volume

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"magestack/init/stackfile"
)

const procSample = `version: 8.4.11 (api:1/proto:86-101)
srcversion: 211FB288A383ED945B83420
 0: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----
    ns:1048 nr:0 dw:2096 dr:4100 al:3 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0
 1: cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C r-----
    ns:104448 nr:0 dw:0 dr:105472 al:8 bm:0 lo:0 pe:2 ua:0 ap:0 ep:1 wo:f oos:943200
	[=>..................] sync'ed: 10.4% (920/1023)M
	finish: 0:00:12 speed: 12,340 (12,340) K/sec
 2: cs:Unconfigured
 3: cs:StandAlone ro:Secondary/Unknown ds:Diskless/DUnknown   r-----
    ns:0 nr:0 dw:0 dr:0 al:0 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0
 4: cs:WFConnection ro:Primary/Unknown ds:UpToDate/DUnknown C s-----
    ns:2048 nr:0 dw:4096 dr:1024 al:2 bm:0 lo:0 pe:0 ua:0 ap:1 ep:1 wo:f oos:12
`

func TestParseProcDRBD(t *testing.T) {
	got, err := parseProcDRBD(strings.NewReader(procSample))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		minor int
		want  State
	}{
		{0, State{Minor: 0, Connection: "Connected", Role: "Primary", PeerRole: "Secondary", Disk: "UpToDate", PeerDisk: "UpToDate", Sent: 1048}},
		{1, State{Minor: 1, Connection: "SyncSource", Role: "Primary", PeerRole: "Secondary", Disk: "UpToDate", PeerDisk: "Inconsistent",
			Sent: 104448, OutOfSync: 943200, Synced: 10.4, Finish: "0:00:12"}},
		{3, State{Minor: 3, Connection: "StandAlone", Role: "Secondary", PeerRole: "Unknown", Disk: "Diskless", PeerDisk: "DUnknown"}},
		// A Primary whose writes are frozen (fencing: the peer is lost).
		{4, State{Minor: 4, Connection: "WFConnection", Role: "Primary", PeerRole: "Unknown", Disk: "UpToDate", PeerDisk: "DUnknown",
			Sent: 2048, OutOfSync: 12, Frozen: true}},
	}
	for _, tt := range tests {
		if got[tt.minor] != tt.want {
			t.Errorf("minor %d:\n got %+v\nwant %+v", tt.minor, got[tt.minor], tt.want)
		}
	}
	if _, ok := got[2]; ok || len(got) != 4 {
		t.Errorf("unconfigured minor listed, or extra minors: %+v", got)
	}
	if !got[1].Syncing() || got[0].Syncing() {
		t.Error("Syncing() wrong")
	}
}

func TestBackingSize(t *testing.T) {
	for _, usable := range []int64{16 << 20, 1 << 30, 1<<30 + 1, 100 << 30} {
		b := BackingSize(usable)
		// DRBD 8.4 internal metadata: 4 KiB superblock, 32 KiB activity
		// log, one bitmap bit per 4 KiB, 4 KiB aligned.
		md := roundUp(36<<10+roundUp(usable/32768, 4096), 4096)
		if b-md < usable || b%(1<<20) != 0 {
			t.Errorf("usable %d: backing %d leaves %d for data", usable, b, b-md)
		}
	}
}

func testStack(t *testing.T, src string) *stackfile.Stack {
	t.Helper()
	st, err := stackfile.Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestPlanFor(t *testing.T) {
	single := testStack(t, `
stack: shop
hosts: [{name: h1, mac: "52:54:00:00:00:01"}]
`)
	pair := testStack(t, `
stack: shop
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01", address: 192.168.50.11/24, pair: dh2, pairlink: {mac: "52:54:00:00:01:01", address: 10.99.0.1/30}}
  - {name: dh2, mac: "52:54:00:00:00:02", address: 192.168.50.12/24, pair: dh1, pairlink: {mac: "52:54:00:00:01:02", address: 10.99.0.2/30}}
roles:
  mail: {volume: 256M}
`)
	dhcpPair := testStack(t, `
stack: shop
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01", pair: dh2}
  - {name: dh2, mac: "52:54:00:00:00:02", pair: dh1}
`)
	secret := func(name string) (string, error) { return "s-" + name, nil }
	paths := Paths{Backing: "/data/volumes", Mount: "/run/v"}
	tests := []struct {
		name         string
		stack        *stackfile.Stack
		host         string
		want         []string // name:minor:size:peer
		unreplicated bool
	}{
		{"single host holds mail, db and acc", single, "h1", []string{"mail1:50:268435456:", "db1:40:1073741824:", "acc1:60:1073741824:"}, false},
		{"paired: both hosts hold every volume of the pair", pair, "dh2",
			[]string{"mail1:50:256000000:10.99.0.2:7850>10.99.0.1:7850", "db1:40:1073741824:10.99.0.2:7840>10.99.0.1:7840", "acc1:60:1073741824:10.99.0.2:7860>10.99.0.1:7860"}, false},
		{"paired over DHCP: no address to replicate to", dhcpPair, "dh1", []string{"mail1:50:268435456:", "db1:40:1073741824:", "acc1:60:1073741824:"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := PlanFor(tt.stack, tt.host, paths, secret)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range p.Specs {
				peer := ""
				if s.Peer != nil {
					peer = s.Peer.Local.String() + ">" + s.Peer.Remote.String()
					if s.Secret != "s-drbd."+s.Name {
						t.Errorf("%s: secret %q", s.Name, s.Secret)
					}
				}
				got = append(got, strings.Join([]string{s.Name, strconv.Itoa(s.Minor), strconv.Itoa(int(s.Size)), peer}, ":"))
				if s.Backing != "/data/volumes/"+s.Name+".img" || s.Mount != "/run/v/"+s.Name {
					t.Errorf("%s: paths %s %s", s.Name, s.Backing, s.Mount)
				}
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("got  %v\nwant %v", got, tt.want)
			}
			if (p.Unreplicated != "") != tt.unreplicated {
				t.Errorf("unreplicated %q", p.Unreplicated)
			}
		})
	}
	if _, err := PlanFor(single, "nope", paths, secret); err == nil {
		t.Error("unknown host accepted")
	}
}

// TestBackingRefusals: a volume the disk cannot hold and a shrink are
// refused before anything is written.
func TestBackingRefusals(t *testing.T) {
	dir := t.TempDir()
	m := NewManager(slog.New(slog.NewTextHandler(io.Discard, nil)))
	huge := Spec{Name: "db1", Size: 1 << 60, Backing: filepath.Join(dir, "db1.img"), Mount: "/run/x"}
	if _, _, err := m.ensureBacking(huge); err == nil || !strings.Contains(err.Error(), "does not fit on the data disk") {
		t.Fatalf("huge volume: %v", err)
	}
	if _, err := os.Stat(huge.Backing); !os.IsNotExist(err) {
		t.Errorf("a refused volume left %s behind", huge.Backing)
	}
	s := Spec{Name: "db1", Size: 32 << 20, Backing: filepath.Join(dir, "db1.img"), Mount: "/run/x"}
	fresh, grown, err := m.ensureBacking(s)
	if err != nil || !fresh || grown {
		t.Fatalf("create: fresh %v grown %v err %v", fresh, grown, err)
	}
	if fi, err := os.Stat(s.Backing); err != nil || fi.Size() != BackingSize(s.Size) {
		t.Fatalf("backing file: %v %v", fi, err)
	}
	s.Size = 64 << 20
	if _, grown, err = m.ensureBacking(s); err != nil || !grown {
		t.Fatalf("grow: %v %v", grown, err)
	}
	s.Size = 16 << 20
	if _, _, err := m.ensureBacking(s); err == nil || !strings.Contains(err.Error(), "shrinking from 64 MiB to 16 MiB is refused") {
		t.Fatalf("shrink: %v", err)
	}
	if fi, _ := os.Stat(s.Backing); fi.Size() != BackingSize(64<<20) {
		t.Errorf("a refused shrink changed the file to %d", fi.Size())
	}
}

func TestSpecValidate(t *testing.T) {
	ok := Spec{Name: "db1", Size: 1 << 30, Backing: "/a/db1.img", Mount: "/run/v/db1"}
	if err := ok.validate(); err != nil {
		t.Fatal(err)
	}
	bad := map[string]Spec{
		"small":     {Name: "db1", Size: 1 << 20, Backing: "/a", Mount: "/b"},
		"name":      {Name: "a/b", Size: 1 << 30, Backing: "/a", Mount: "/b"},
		"relative":  {Name: "db1", Size: 1 << 30, Backing: "a", Mount: "/b"},
		"no secret": {Name: "db1", Size: 1 << 30, Backing: "/a", Mount: "/b", Peer: &Link{Local: netip.MustParseAddrPort("10.0.0.1:7840"), Remote: netip.MustParseAddrPort("10.0.0.2:7840")}},
	}
	for name, s := range bad {
		if err := s.validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestRedactKeepsSecretOutOfErrors(t *testing.T) {
	got := strings.Join(redact([]string{"connect", "--shared-secret=hunter2", "--protocol=C"}), " ")
	if strings.Contains(got, "hunter2") {
		t.Errorf("secret in %q", got)
	}
}

// TestAwaitPeerSecondary: a promotion waits while the peer still holds the
// volume Primary (an old owner finishing its graceful stop), returns once
// the peer demoted, and gives up at its limit.
func TestAwaitPeerSecondary(t *testing.T) {
	const peerPrimary = "version: 8.4.11 (api:1/proto:86-101)\n 0: cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate C r-----\n"
	const peerSecondary = "version: 8.4.11 (api:1/proto:86-101)\n 0: cs:Connected ro:Secondary/Secondary ds:UpToDate/UpToDate C r-----\n"
	for _, tt := range []struct {
		name     string
		demotes  bool
		limit    time.Duration
		atLeast  time.Duration
		boundary string
	}{
		{"returns once the peer demotes", true, time.Minute, 300 * time.Millisecond, "demoted"},
		{"gives up at its limit", false, 300 * time.Millisecond, 300 * time.Millisecond, "limit"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			proc := filepath.Join(t.TempDir(), "drbd")
			if err := os.WriteFile(proc, []byte(peerPrimary), 0o644); err != nil {
				t.Fatal(err)
			}
			m := &Manager{log: slog.New(slog.DiscardHandler), procDRBD: proc}
			start := time.Now() // before the timer: took is then never short of it
			if tt.demotes {
				time.AfterFunc(tt.atLeast, func() { os.WriteFile(proc+".new", []byte(peerSecondary), 0o644); os.Rename(proc+".new", proc) })
			}
			m.awaitPeerSecondary(context.Background(), Spec{Name: "db1", Minor: 0}, tt.limit)
			took := time.Since(start)
			if took < tt.atLeast {
				t.Fatalf("returned after %v, before the %s (%v)", took, tt.boundary, tt.atLeast)
			}
			if took > 30*time.Second { // a hang bound, not a timing
				t.Fatalf("returned only after %v", took)
			}
		})
	}
}
