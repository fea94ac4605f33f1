package main

import (
	"bytes"
	"os"
	"testing"
)

// TestDocIsUpToDate fails when docs/stackfile.md no longer matches the Go
// types: run `go generate ./init/stackfile`.
func TestDocIsUpToDate(t *testing.T) {
	want, err := generate("../..")
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("../../../../docs/stackfile.md")
	if err != nil {
		t.Fatalf("%v (run go generate ./init/stackfile)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("docs/stackfile.md is stale: run go generate ./init/stackfile")
	}
}

func TestEveryFieldIsDocumented(t *testing.T) {
	doc, err := generate("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"`stack`", "`hosts`", "`pairlink`", "`fence`", "`vip`", "`ratelimit`", "`privatekey`", "`holddown`", "`signedby`", "`settings`", "`keys`"} {
		if !bytes.Contains(doc, []byte("| "+key+" |")) {
			t.Errorf("no table row for %s", key)
		}
	}
	if bytes.Contains(doc, []byte("|  |\n")) {
		t.Errorf("a field has no description:\n%s", doc)
	}
}
