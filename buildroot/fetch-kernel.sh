#!/bin/bash
# Downloads Debian's kernel package (the one linux-image-amd64 depends on) and
# extracts it under DIR/root, never installing it into /boot. Idempotent: a
# version already extracted is reused without touching the network. Writes
# the kernel version (e.g. 6.1.0-56-amd64) to DIR/version.
#
# usage: fetch-kernel.sh DIR [METAPACKAGE]
set -euo pipefail
dir=${1:?usage: fetch-kernel.sh DIR [METAPACKAGE]}
meta=${2:-linux-image-amd64}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

resolve() {
	apt-cache depends "$meta" 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

extracted() { # version
	[[ -f $dir/root/boot/vmlinuz-$1 && -f $dir/root/boot/config-$1 && -d $dir/root/lib/modules/$1/kernel ]] &&
		{ [[ -f $dir/root/.complete-$1 ]] || [[ -f $dir/root/lib/modules/$1/modules.order ]]; }
}

pkg=$(resolve || true)
if [[ -z $pkg ]]; then
	# No package lists yet (fresh machine), or apt cannot answer: reuse an
	# extracted kernel if there is one, else fetch the lists once.
	have=$(ls "$dir"/root/boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1 || true)
	if [[ -n $have ]] && extracted "${have##*/vmlinuz-}"; then
		pkg=linux-image-${have##*/vmlinuz-}
		echo "fetch-kernel: apt cannot resolve $meta; reusing extracted $pkg" >&2
	else
		apt-get update -qq
		pkg=$(resolve || true)
	fi
fi
[[ -n $pkg ]] || { echo "fetch-kernel: cannot resolve the kernel package $meta depends on" >&2; exit 1; }
ver=${pkg#linux-image-}

if extracted "$ver"; then
	echo "fetch-kernel: $pkg already extracted in $dir/root"
else
	echo "fetch-kernel: downloading $pkg"
	# As root apt warns that _apt cannot access the directory and downloads
	# unsandboxed: harmless here.
	(cd "$dir" && apt-get download "$pkg")
	deb=$(ls -t "$dir/${pkg}"_*.deb | head -n1)
	dpkg-deb -x "$deb" "$dir/root"
	touch "$dir/root/.complete-$ver"
	extracted "$ver" || { echo "fetch-kernel: $deb did not hold vmlinuz, config and modules for $ver" >&2; exit 1; }
fi
printf '%s\n' "$ver" >"$dir/version"
