package elfdeps

import (
	"debug/elf"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNeedsDynamicProgram(t *testing.T) {
	const prog = "/bin/ls"
	if _, err := os.Stat(prog); err != nil {
		t.Skipf("%s not present: %v", prog, err)
	}
	files, err := Resolver{SearchDirs: DefaultSearchDirs}.Needs(prog)
	if err != nil {
		t.Fatal(err)
	}
	dst := map[string]File{}
	for _, f := range files {
		dst[filepath.Base(f.Dst)] = f
		st, err := os.Lstat(f.Src)
		if err != nil || !st.Mode().IsRegular() {
			t.Errorf("%s: source %s is not a regular file (%v)", f.Dst, f.Src, err)
		}
	}
	for _, want := range []string{"ls", "libc.so.6", "ld-linux-x86-64.so.2"} {
		if _, ok := dst[want]; !ok {
			t.Errorf("closure of %s lacks %s; got %v", prog, want, files)
		}
	}
	// Every DT_NEEDED name of every ELF in the closure must itself be in it.
	for _, f := range files {
		ef, err := elf.Open(f.Src)
		if err != nil {
			t.Fatal(err)
		}
		libs, _ := ef.ImportedLibraries()
		ef.Close()
		for _, l := range libs {
			if _, ok := dst[l]; !ok {
				t.Errorf("%s needs %s, missing from closure", f.Dst, l)
			}
		}
	}
	// The interpreter must sit at the exact path the program names.
	ef, err := elf.Open(prog)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			p.ReadAt(b, 0)
			interp := strings.TrimRight(string(b), "\x00")
			found := false
			for _, f := range files {
				found = found || f.Dst == interp
			}
			if !found {
				t.Errorf("interpreter %s not placed at its own path; got %v", interp, files)
			}
		}
	}
}

func TestNeedsStaticProgram(t *testing.T) {
	const prog = "/bin/busybox"
	ef, err := elf.Open(prog)
	if err != nil {
		t.Skipf("%s not present: %v", prog, err)
	}
	libs, _ := ef.ImportedLibraries()
	ef.Close()
	if len(libs) > 0 {
		t.Skipf("%s is dynamically linked here", prog)
	}
	files, err := Resolver{SearchDirs: DefaultSearchDirs}.Needs(prog)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || files[0].Dst != prog {
		t.Fatalf("static program: want only itself, got %v", files)
	}
}

func TestNeedsMissingLibraryNamesIt(t *testing.T) {
	// /bin/ls resolved against an empty directory cannot find libc.
	_, err := Resolver{SearchDirs: []string{t.TempDir()}}.Needs("/bin/ls")
	if err == nil {
		t.Fatal("want an error for unresolvable libraries")
	}
	if !strings.Contains(err.Error(), "needed by /") {
		t.Errorf("error should name the library and who needs it: %v", err)
	}
}

func TestNeedsNotELF(t *testing.T) {
	p := filepath.Join(t.TempDir(), "script")
	os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755)
	if _, err := (Resolver{SearchDirs: DefaultSearchDirs}).Needs(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("want an error naming %s, got %v", p, err)
	}
}

func TestIsStatic(t *testing.T) {
	for prog, want := range map[string]bool{"/bin/busybox": true, "/bin/ls": false} {
		if _, err := os.Stat(prog); err != nil {
			t.Logf("skip %s: %v", prog, err)
			continue
		}
		got, err := IsStatic(prog)
		if err != nil || got != want {
			t.Errorf("IsStatic(%s) = %v, %v; want %v", prog, got, err, want)
		}
	}
}
