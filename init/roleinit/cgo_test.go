//go:build cgo

package roleinit

const cgoEnabled = true
