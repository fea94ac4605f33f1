package main

import (
	"fmt"
	"slices"
	"testing"
)

// benchTB lets the bench use the harness's test networks (qemu.NewNet,
// AddCable, AddClient, Namespace.Start), which take a testing.TB: a fatal
// call becomes an error returned by do, cleanups run at close. Only the
// methods the harness calls are implemented; the embedded interface is nil,
// so a new one would panic, and do reports that as an error too.
type benchTB struct {
	testing.TB
	name     string
	cleanups []func()
}

// tbFailure carries a harness Fatal/Skip out of do.
type tbFailure struct{ msg string }

func (b *benchTB) Name() string                      { return b.name }
func (b *benchTB) Helper()                           {}
func (b *benchTB) Logf(string, ...any)               {}
func (b *benchTB) Log(...any)                        {}
func (b *benchTB) Failed() bool                      { return false }
func (b *benchTB) Cleanup(f func())                  { b.cleanups = append(b.cleanups, f) }
func (b *benchTB) Fatal(args ...any)                 { panic(tbFailure{fmt.Sprint(args...)}) }
func (b *benchTB) Fatalf(format string, args ...any) { panic(tbFailure{fmt.Sprintf(format, args...)}) }
func (b *benchTB) Skip(args ...any)                  { panic(tbFailure{"skipped: " + fmt.Sprint(args...)}) }
func (b *benchTB) Skipf(format string, args ...any) {
	panic(tbFailure{"skipped: " + fmt.Sprintf(format, args...)})
}

// do runs f, turning the harness's Fatal (or any panic) into an error.
func (b *benchTB) do(f func()) (err error) {
	defer func() {
		switch r := recover().(type) {
		case nil:
		case tbFailure:
			err = fmt.Errorf("%s: %s", b.name, r.msg)
		default:
			err = fmt.Errorf("%s: harness call failed: %v", b.name, r)
		}
	}()
	f()
	return nil
}

// close runs the cleanups, last registered first, like testing does.
func (b *benchTB) close() {
	for _, f := range slices.Backward(b.cleanups) {
		b.do(f)
	}
	b.cleanups = nil
}
