package firewall

import (
	"context"
	"strings"
	"testing"
)

// TestRenderMatchesKernel loads each golden ruleset into a fresh network
// namespace and checks that the kernel's own listing (nft CLI) is exactly
// Render's text, and that Read decodes the live table back to the same.
func TestRenderMatchesKernel(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			ns, fd := netns(t)
			rs, err := Build(loadStack(t, tc.stack), tc.host)
			if err != nil {
				t.Fatal(err)
			}
			fw := NewInNetNS(fd)
			if err := fw.Apply(context.Background(), rs); err != nil {
				t.Fatal(err)
			}
			want := Render(rs)
			if got := nftList(t, ns); got != want {
				t.Fatalf("kernel listing differs from Render:\n%s", strings.Join(lineDiff(strings.Split(want, "\n"), strings.Split(got, "\n")), "\n"))
			}
			live, err := fw.Read(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got := Render(live); got != want {
				t.Fatalf("decoded live table differs:\n%s", strings.Join(lineDiff(strings.Split(want, "\n"), strings.Split(got, "\n")), "\n"))
			}
			diffs, err := fw.Check(context.Background(), rs)
			if err != nil || len(diffs) != 0 {
				t.Fatalf("Check right after Apply: %v %v", diffs, err)
			}
			// Applying again replaces, never duplicates.
			if err := fw.Apply(context.Background(), rs); err != nil {
				t.Fatal(err)
			}
			if got := nftList(t, ns); got != want {
				t.Fatalf("second apply changed the table:\n%s", got)
			}
		})
	}
}
