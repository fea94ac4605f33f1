package imagestore

import (
	"slices"
	"testing"

	"magestack/init/stackfile"
)

func TestNeeded(t *testing.T) {
	const pair = `stack: s
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01", pair: dh2}
  - {name: dh2, mac: "52:54:00:00:00:02", pair: dh1}
  - {name: dh3, mac: "52:54:00:00:00:03"}
public: {vip: 192.0.2.50/24}
roles:
  web: {count: 1, image: web, hosts: [dh1]}
  db: {count: 1, image: db, hosts: [dh2]}
  monitor: {count: 1, image: monitor, hosts: [dh3]}
`
	const one = `stack: s
hosts:
  - {name: dh1, mac: "52:54:00:00:00:01"}
public: {vip: 192.0.2.50/24}
roles:
  monitor: {count: 1, image: monitor}
  web: {count: 2, image: web}
  lb: {count: 0, image: lb}
`
	for _, tc := range []struct {
		name, stack, host, fallback string
		want                        []string
	}{
		{"paired host needs its peer's images too", pair, "dh1", "busybox", []string{"db", "web"}},
		{"unpaired host only its own", pair, "dh3", "busybox", []string{"monitor"}},
		{"unknown host of a multi-host stack", pair, "stranger", "", nil},
		{"one-host stack, test image for unnamed roles, no zero-count role", one, "dh1", "busybox", []string{"monitor", "web"}},
		{"one-host stack adopts an unnamed machine", one, "localhost", "busybox", []string{"monitor", "web"}},
		// fw has no image of its own (the host does its work): built in.
		{"unnamed roles run their real images", one, "dh1", "", []string{"acc", "db", "mail", "monitor", "web"}},
		{"a paired host's unnamed roles too", pair, "dh2", "", []string{"db", "lb", "mail", "web"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := stackfile.Parse("stack.yaml", []byte(tc.stack))
			if err != nil {
				t.Fatal(err)
			}
			got, err := Needed(st, tc.host, tc.fallback)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Needed(%s) = %v, want %v", tc.host, got, tc.want)
			}
		})
	}
}
