#!/usr/bin/env bash
# Installs what graft needs on a Debian 12 machine, once. Safe to run again: it only calls apt
# when something is missing. graft itself downloads kernels and busybox into its cache.
set -euo pipefail

packages=(
	qemu-system-x86 # the lab boots target kernels under TCG
	make gcc-12 binutils flex bison bc libelf-dev libssl-dev dwarves # preparing a kernel tree
	patch # applying source patches in graft build
	xz-utils kmod cpio # tests cross-check graft with the kernel's own scripts
	postgresql # the fleet server's tests run its API on a real PostgreSQL (their own cluster)
	chromium chromium-driver # the dashboard's test loads it in a real headless browser
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
# graft asks apt for kernel packages, so apt's lists must be current even when nothing is missing.
lists=/var/lib/apt/lists
if [ ${#missing[@]} -gt 0 ] || [ -z "$(find "$lists" -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -n1)" ]; then
	echo "setup: apt-get update" >&2
	# A third-party source being unreachable must not stop us; Debian's own lists are what count.
	$sudo apt-get update -q || echo "setup: apt-get update reported errors; continuing with what it fetched" >&2
fi
if [ ${#missing[@]} -gt 0 ]; then
	echo "setup: installing ${missing[*]}" >&2
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "setup: cargo is required (https://rustup.rs)" >&2; exit 1; }
