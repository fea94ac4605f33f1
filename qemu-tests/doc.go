// Package qemutests holds the QEMU scenarios: each topic adds its own
// <topic>_test.go file in this package (package qemutests) and boots VMs with
// the harness in magestack/qemu-tests/qemu. Every scenario skips unless
// MAGESTACK_QEMU=1 (make test sets it).
package qemutests
