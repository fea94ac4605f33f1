//go:build !cgo

package render

const cgoEnabled = false
