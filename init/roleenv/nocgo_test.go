//go:build !cgo

package roleenv

const cgoEnabled = false
