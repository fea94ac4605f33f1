package logbuf

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRingBoundedInBytes(t *testing.T) {
	l, err := New(Options{RingBytes: 10 * (100 + lineOverhead)})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 1000; i++ {
		l.Append("stdout", fmt.Sprintf("%03d", i)+strings.Repeat("x", 97))
	}
	got := l.Tail(0)
	if len(got) != 10 {
		t.Fatalf("kept %d lines, want 10", len(got))
	}
	if !strings.HasPrefix(got[0].Text, "990") || !strings.HasPrefix(got[9].Text, "999") {
		t.Errorf("kept %q .. %q, want lines 990..999", got[0].Text[:3], got[9].Text[:3])
	}
	if len(l.ring) > 200 {
		t.Errorf("ring slice grew to %d entries: not compacted", len(l.ring))
	}
	if tail := l.Tail(3); len(tail) != 3 || !strings.HasPrefix(tail[2].Text, "999") {
		t.Errorf("Tail(3) = %d lines", len(tail))
	}
}

func TestRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "web", "nginx.log")
	l, err := New(Options{Path: path, FileBytes: 1000, Files: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		l.Append("stderr", fmt.Sprintf("line %03d %s", i, strings.Repeat("y", 40)))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := "[nginx.log nginx.log.1 nginx.log.2]"; fmt.Sprint(names) != want {
		t.Fatalf("files %v, want %s", names, want)
	}
	for _, n := range names {
		st, _ := os.Stat(filepath.Join(filepath.Dir(path), n))
		if st.Size() > 1000 {
			t.Errorf("%s is %d bytes, over the 1000 limit", n, st.Size())
		}
	}
	cur, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(cur)), "\n")
	last := lines[len(lines)-1]
	if !strings.Contains(last, " stderr line 099 ") {
		t.Errorf("last line %q", last)
	}
	if _, err := time.Parse("2006-01-02T15:04:05.000000Z", strings.Fields(last)[0]); err != nil {
		t.Errorf("line not timestamped: %q: %v", last, err)
	}
	prev, _ := os.ReadFile(path + ".1")
	if !strings.Contains(string(prev), "line 0") {
		t.Errorf("rotated file does not hold older lines: %q", prev)
	}
}

func TestFollowHasNoGap(t *testing.T) {
	l, _ := New(Options{})
	l.Append("stdout", "one")
	l.Append("stdout", "two")
	recent, ch, cancel := l.Follow(1, 10)
	if len(recent) != 1 || recent[0].Text != "two" {
		t.Fatalf("recent = %v", recent)
	}
	l.Append("stdout", "three")
	select {
	case line := <-ch:
		if line.Text != "three" {
			t.Errorf("followed %q", line.Text)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no line followed")
	}
	cancel()
	if _, ok := <-ch; ok {
		t.Error("channel not closed after cancel")
	}
	cancel() // twice is harmless
}

func TestReadFromSplitsLines(t *testing.T) {
	l, _ := New(Options{})
	long := strings.Repeat("z", MaxLine+10)
	in := "alpha\nbeta\n" + long + "\nno newline at end"
	if err := l.ReadFrom("stdout", strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, line := range l.Tail(0) {
		got = append(got, fmt.Sprintf("%d", len(line.Text)))
	}
	want := fmt.Sprint([]string{"5", "4", fmt.Sprint(MaxLine), "10", "17"})
	if fmt.Sprint(got) != want {
		t.Errorf("line lengths %v, want %s", got, want)
	}
}

func TestSlowFollowerToldOfDrops(t *testing.T) {
	l, _ := New(Options{})
	_, ch, cancel := l.Follow(0, 2)
	defer cancel()
	for i := 0; i < 5; i++ {
		l.Append("stdout", fmt.Sprint(i))
	}
	// The buffer held 0 and 1; 2, 3, 4 were dropped.
	if a, b := <-ch, <-ch; a.Text != "0" || b.Text != "1" {
		t.Fatalf("first lines %q %q", a.Text, b.Text)
	}
	l.Append("stdout", "5")
	if m := <-ch; m.Stream != "supervisor" || m.Text != "[3 lines dropped: follower too slow]" {
		t.Errorf("marker %+v", m)
	}
	if n := <-ch; n.Text != "5" {
		t.Errorf("after marker %q", n.Text)
	}
}
