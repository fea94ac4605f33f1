#!/bin/bash
# Installs the Debian packages magestack's build and tests need. Idempotent.
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils ipxe-qemu ipxe ovmf busybox-static nftables iproute2 cpio zstd xz-utils
      dnsmasq-base wireguard-tools)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
