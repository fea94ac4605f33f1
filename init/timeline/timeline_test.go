package timeline

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"testing"
)

func TestTimeline(t *testing.T) {
	now := int64(100)
	clock := func() int64 { return now }
	var lines []string
	tl := New(clock, func(l string) { lines = append(lines, l) })
	path := filepath.Join(t.TempDir(), "run", "timeline.json")
	tl.PersistTo(path)

	endMounts := tl.Begin("mounts")
	now = 120
	endMounts(nil)
	endMounts(errors.New("second end is ignored"))

	endNet := tl.Begin("network")
	now = 300
	endNet(errors.New("no carrier"))
	now = 310
	endNet2 := tl.Begin("network")
	now = 400
	endNet2(nil)

	want := []Entry{
		{Step: "mounts", Attempt: 1, StartMS: 100, EndMS: 120, Done: true, OK: true},
		{Step: "network", Attempt: 1, StartMS: 120, EndMS: 300, Done: true, Error: "no carrier"},
		{Step: "network", Attempt: 2, StartMS: 310, EndMS: 400, Done: true, OK: true},
	}
	if got := tl.Snapshot(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Snapshot =\n%#v\nwant\n%#v", got, want)
	}
	wantLines := []string{
		"magestack: timeline mounts start_ms=100 end_ms=120 ok",
		"magestack: timeline network start_ms=120 end_ms=300 error",
		"magestack: timeline network start_ms=310 end_ms=400 ok",
	}
	if !reflect.DeepEqual(lines, wantLines) {
		t.Fatalf("lines = %q, want %q", lines, wantLines)
	}
	fromFile, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromFile, want) {
		t.Fatalf("persisted = %#v", fromFile)
	}
	if _, err := json.Marshal(tl.Snapshot()); err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotShowsRunningStep(t *testing.T) {
	tl := New(func() int64 { return 5 }, nil)
	tl.Begin("kmod")
	s := tl.Snapshot()
	if len(s) != 1 || s[0].Done || s[0].EndMS != 0 {
		t.Fatalf("running step snapshot = %#v", s)
	}
}
