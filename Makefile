# magestack build, run and test entry points. See README.md.
SHELL := /bin/bash
GO ?= go
BUILD := $(CURDIR)/build
export CGO_ENABLED := 0

.PHONY: all image run test test-unit test-qemu bench clean

all: image

$(BUILD)/magestack: $(shell find . -name '*.go' -not -path './build/*') go.mod go.sum $(wildcard init/stackfile/*.yaml)
	@mkdir -p $(BUILD)
	$(GO) build -trimpath -ldflags '-s -w' -o $@ ./init/cmd/magestack

# Filled in by the buildroot: kernel from Debian's linux-image-amd64 and the
# initramfs holding the binary and the module set.
image: $(BUILD)/magestack

test: test-unit

# The quick logic tests: no VMs.
test-unit:
	$(GO) vet ./...
	$(GO) test -count=1 ./...

clean:
	rm -rf $(BUILD)
