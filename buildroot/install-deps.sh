#!/bin/bash
# Installs what magestack's build and tests need on a Debian bookworm machine,
# as root, using only apt and the Go module proxy. Idempotent and about a
# second when everything is there: `make run` and `make test` call it (make
# deps). Not root: it only checks, and names what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build: make, git (go's VCS stamping), dpkg-deb + apt-get download for the
# kernel package, curl/unzip/ca-certificates for the Go toolchain.
# Image: drbd-utils and e2fsprogs are copied into the initramfs (Makefile
# INITRAMFS_BINS); busybox-static is the test role image; kmod's depmod
# cross-checks the generated modules.dep; mmdebstrap + squashfs-tools build
# the role images (make images).
# Tests: QEMU (TCG), iPXE and OVMF for netboot, nftables/iproute2/dnsmasq
# for fixtures, wireguard-tools + wireguard-go for the VPN client side,
# fdisk/mount/util-linux (sfdisk, losetup, nsenter) for disk and namespace
# fixtures, openipmi (ipmi_sim) as the BMC the IPMI fence is tested against,
# haproxy for the lb runtime-API tests, keepalived for the failover bench,
# nmap for the public exposure scan (a scanner nobody here wrote). gcc and
# libc6-dev: cgo for the race detector run (make test-race).
pkgs=(make git ca-certificates curl unzip dpkg apt
      qemu-system-x86 qemu-utils ipxe-qemu ipxe ovmf
      busybox-static drbd-utils e2fsprogs kmod mmdebstrap squashfs-tools
      nftables iproute2 dnsmasq-base wireguard-tools wireguard-go fdisk mount util-linux
      cpio zstd xz-utils lz4
      s6 runit openipmi haproxy keepalived nmap gcc libc6-dev)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})) && [[ $(id -u) != 0 ]]; then
	echo "install-deps: missing Debian packages: ${missing[*]}" >&2
	echo "install-deps: run 'sudo make deps' (or 'sudo bash buildroot/install-deps.sh') once, then make again" >&2
	exit 1
fi
if ((${#missing[@]})); then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# apt-cache must know linux-image-amd64 for the kernel fetch.
if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
	apt-get update -qq
fi

# Go: the version go.mod names, at /usr/local/go (GO_INSTALL_DIR to test). Debian's golang-go is too
# old, so the toolchain comes from the Go module proxy as the
# golang.org/toolchain module, exactly what `go` itself downloads for
# GOTOOLCHAIN switches.
goroot=${GO_INSTALL_DIR:-/usr/local/go}
want=$(awk '$1 == "go" { print $2; exit }' go.mod)
have=$("$goroot/bin/go" env GOVERSION 2>/dev/null || true)
have=${have#go}
if [[ -n $have ]] && [[ $(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1) == "$want" ]]; then
	echo "install-deps: go $have at $goroot (go.mod wants $want)"
else
	if [[ $(id -u) != 0 && -z ${GO_INSTALL_DIR:-} ]]; then
		echo "install-deps: Go $want is not at $goroot: run 'sudo make deps' once" >&2
		exit 1
	fi
	proxy=${GOPROXY:-https://proxy.golang.org}
	proxy=${proxy%%[,|]*}
	[[ $proxy == direct || $proxy == off ]] && proxy=https://proxy.golang.org
	mod="v0.0.1-go${want}.linux-amd64"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	echo "install-deps: fetching Go $want from $proxy"
	curl -fsSL --retry 3 -o "$tmp/go.zip" "$proxy/golang.org/toolchain/@v/$mod.zip"
	unzip -q "$tmp/go.zip" -d "$tmp/x"
	root="$tmp/x/golang.org/toolchain@$mod"
	# Module zips do not keep file modes: restore the executables' bits.
	chmod +x "$root"/bin/* "$root"/pkg/tool/*/*
	if [[ -d $goroot ]]; then
		mv "$goroot" "$goroot.old-$(date +%s)"
	fi
	mkdir -p "$(dirname "$goroot")"
	mv "$root" "$goroot"
	"$goroot/bin/go" version
fi
