package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseMkimages(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    warmResult
		wantErr string
	}{
		{"warm", "image           bytes  seconds source\nlb          107331584      1.2 cache\nweb          70971392      0.8 cache\ndisk        450887680 (/tmp/x/images.img)\ntotal 9.5 s\n",
			warmResult{inner: 9500 * time.Millisecond, cached: 2}, ""},
		{"one rebuilt", "lb 1 1.0 cache\nweb 2 120.0 built\ntotal 130.0 s\n", warmResult{inner: 130 * time.Second, cached: 1, built: 1}, ""},
		{"prebuilt extra is neither", "busybox 5 - prebuilt\ntotal 1.0 s\n", warmResult{inner: time.Second}, ""},
		{"no total", "lb 1 1.0 cache\n", warmResult{}, "no total line"},
		{"bad total", "total x s\n", warmResult{}, "mkimages total"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMkimages(tt.out)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
