package vipprobe

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"magestack/init/nsdo"
)

var t0 = time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func TestFirstAnswer(t *testing.T) {
	probes := []Probe{
		{Start: at(0), End: at(5), OK: true, Body: "h1", MAC: "a"},
		{Start: at(100), End: at(1100), OK: false, Err: "timeout"},
		// Started earlier but answered later than the next one (its SYN
		// was retransmitted): the first answer is the one that ended first.
		{Start: at(200), End: at(1400), OK: true, Body: "h2", MAC: "b"},
		{Start: at(300), End: at(310), OK: true, Body: "h2", MAC: "b"},
		{Start: at(400), End: at(405), OK: true, Body: "h1", MAC: "a"},
	}
	tests := []struct {
		name    string
		since   time.Time
		match   func(Probe) bool
		wantEnd time.Time
		wantOK  bool
	}{
		{"any after loss", at(50), nil, at(310), true},
		{"from h1 only", at(50), func(p Probe) bool { return p.Body == "h1" }, at(405), true},
		{"before the first", at(-1), nil, at(5), true},
		{"none after", at(400), nil, time.Time{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := FirstAnswer(probes, tt.since, tt.match)
			if ok != tt.wantOK || (ok && !got.End.Equal(tt.wantEnd)) {
				t.Fatalf("FirstAnswer = %v %v, want end %v %v", got.End.Sub(t0), ok, tt.wantEnd.Sub(t0), tt.wantOK)
			}
		})
	}
	if last, ok := LastAnswer(probes, at(300)); !ok || !last.End.Equal(at(5)) {
		t.Fatalf("LastAnswer before 300ms = %v %v, want the one ending at 5ms", last.End.Sub(t0), ok)
	}
	if f, n := Failed(probes, at(50), at(350)); f != 1 || n != 3 {
		t.Fatalf("Failed = %d/%d, want 1/3", f, n)
	}
	if !Steady(probes, at(150), at(450)) || Steady(probes, at(50), at(450)) || Steady(probes, at(500), at(900)) {
		t.Fatal("Steady: want all answered and at least one request")
	}
}

func TestMACHistory(t *testing.T) {
	ch := []MACChange{{at(10), "a"}, {at(2000), "b"}, {at(5000), "a"}}
	if got, ok := FirstMAC(ch, at(100), "b"); !ok || !got.Equal(at(2000)) {
		t.Fatalf("FirstMAC b = %v %v", got.Sub(t0), ok)
	}
	if _, ok := FirstMAC(ch, at(100), "c"); ok {
		t.Fatal("FirstMAC found a MAC never seen")
	}
	tests := []struct {
		from, to time.Time
		want     int
	}{
		{at(0), at(10000), 2}, // the first learned entry is not a move
		{at(100), at(10000), 2},
		{at(100), at(3000), 1},
		{at(2000), at(4000), 0}, // (from, to]: the change at 2000 is before
		{at(6000), at(9000), 0},
	}
	for _, tt := range tests {
		if got := Moves(ch, tt.from, tt.to); got != tt.want {
			t.Errorf("Moves(%v, %v) = %d, want %d", tt.from.Sub(t0), tt.to.Sub(t0), got, tt.want)
		}
	}
}

// TestProberInNamespaces probes a real server across a veth pair between
// two namespaces: answers carry the server's MAC; once it is gone, requests
// fail and are recorded as failed.
func TestProberInNamespaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("the ip command (iproute2) is missing")
	}
	cli, srv := fmt.Sprintf("vpt-c-%d", os.Getpid()), fmt.Sprintf("vpt-s-%d", os.Getpid())
	for _, args := range [][]string{
		{"netns", "add", cli}, {"netns", "add", srv},
		{"-n", srv, "link", "add", "eth0", "address", "52:54:00:cc:00:01", "type", "veth", "peer", "name", "eth0", "netns", cli},
		{"-n", srv, "addr", "add", "10.231.0.1/24", "dev", "eth0"}, {"-n", srv, "link", "set", "eth0", "up"},
		{"-n", cli, "addr", "add", "10.231.0.2/24", "dev", "eth0"}, {"-n", cli, "link", "set", "eth0", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
		if args[0] == "netns" {
			ns := args[2]
			t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		}
	}
	sh, err := netns.GetFromName(srv)
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	var ln net.Listener
	if err := nsdo.Do(sh, func() (err error) { ln, err = net.Listen("tcp", "10.231.0.1:80"); return err }); err != nil {
		t.Fatal(err)
	}
	server := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "srv\n") })}
	go server.Serve(ln)
	ch, err := netns.GetFromName(cli)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	p, err := Start(Config{NS: ch, URL: "http://10.231.0.1/", VIP: netip.MustParseAddr("10.231.0.1"), Every: 20 * time.Millisecond, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := p.WaitAnswer(ctx, time.Time{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Body != "srv" {
		t.Errorf("body %q, want srv", got.Body)
	}
	// The MAC is read from the neighbour table after the answer: the entry
	// exists by then.
	deadline := time.Now().Add(10 * time.Second)
	for p.MAC() == "" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if p.MAC() != "52:54:00:cc:00:01" {
		t.Errorf("VIP MAC %q, want the server's 52:54:00:cc:00:01", p.MAC())
	}
	server.Close()
	gone := time.Now()
	time.Sleep(500 * time.Millisecond)
	if failed, total := Failed(p.Probes(), gone.Add(50*time.Millisecond), time.Now()); total == 0 || failed != total {
		t.Errorf("after the server closed: %d/%d requests failed, want all of at least one", failed, total)
	}
}
