#!/usr/bin/env bash
# Installs with apt what building, booting and testing Berth need. Idempotent and quiet
# when everything is present. Checks with dpkg after installing (a `command -v` check
# before would miss packages that ship no command, and half-installed ones).
set -euo pipefail

# Why each package is here:
#   qemu-system-x86 qemu-utils ovmf   the test bed (QEMU, qemu-img, UEFI firmware)
#   erofs-utils btrfs-progs           root filesystem image, /var filesystem (issue 3)
#   mtools dosfstools gdisk           ESP and GPT written without root or loop devices
#   cpio zstd                         inspecting initramfs images by hand
#   busybox-static                    test image shell; kernel-only boot floor
#   kmod                              depmod indexes the unpacked kernel's modules
#   cryptsetup-bin                    veritysetup builds the root's dm-verity hash tree
#   socat                             metadata-server forwarding in guest tests
#   podman bsdutils                   a real client driving berth-runtime (script(1) for -it)
#   docker-registry skopeo            a real registry for the store's pull tests, and
#                                     what loads it (the tests start it on 127.0.0.1)
#   nftables                          nft, shipped in the image for the daemon's NAT table
#   libwrap0                          a library of Debian's sshd (which image-build fetches
#                                     and ships; its libraries come from this machine)
#   openssh-client                    ssh, ssh-keygen, ssh-keyscan: the SSH tests' client
#   genisoimage                       ISO 9660 datasource volumes (NoCloud) in agent tests
#   minisign                          signs the update payload (run by image-build)
#   apparmor                          apparmor_parser compiles the AppArmor profile the
#                                     runtime's guest test loads (never shipped)
#   prometheus openssl                the metrics test's scraper and promtool, and its
#                                     test CA (its service is never started here)
#   rsyslog rsyslog-gnutls            the log forwarding test's receiver (imtcp, TLS);
#                                     run by the test on 127.0.0.1 only, never as a service
PACKAGES=(qemu-system-x86 qemu-utils ovmf erofs-utils btrfs-progs mtools dosfstools gdisk
          cpio zstd busybox-static kmod socat
          cryptsetup-bin podman bsdutils docker-registry skopeo nftables libwrap0 openssh-client genisoimage apparmor minisign
          prometheus openssl rsyslog rsyslog-gnutls)

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done

# image-build resolves the kernel with apt-cache: the package lists must exist.
need_update=0
apt-cache show --no-all-versions linux-image-amd64 >/dev/null 2>&1 || need_update=1

if [ ${#missing[@]} -eq 0 ] && [ $need_update -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "deps: missing packages: ${missing[*]:-none} (apt lists stale: $need_update); run as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "deps: apt-get update"
apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  # A fresh Debian 12 machine may carry qemu-utils from backports, which conflicts with
  # bookworm's qemu-system-x86: install both at the same version in one command.
  args=()
  qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  for p in "${missing[@]}"; do
    case "$p" in qemu-system-x86|qemu-utils) ;; *) args+=("$p") ;; esac
  done
  if ! installed qemu-system-x86 || ! installed qemu-utils; then
    args+=(qemu-system-x86 "qemu-utils=$qemu_version")
  fi
  echo "deps: installing ${args[*]}"
  # No package may start a service here (docker-registry's would listen on every
  # address): policy-rc.d says no for the length of the install.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq --allow-downgrades "${args[@]}" >/dev/null
  if [ $own_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  for unit in docker-registry prometheus prometheus-node-exporter rsyslog; do
    if command -v systemctl >/dev/null && systemctl is-enabled "$unit" >/dev/null 2>&1; then
      systemctl disable --now "$unit" >/dev/null 2>&1 || true
    fi
  done
fi

still=()
for p in "${PACKAGES[@]}"; do installed "$p" || still+=("$p"); done
if [ ${#still[@]} -gt 0 ]; then
  echo "deps: still missing after apt-get install: ${still[*]}" >&2
  exit 1
fi
apt-cache show --no-all-versions linux-image-amd64 >/dev/null 2>&1 || {
  echo "deps: apt knows no linux-image-amd64 even after apt-get update" >&2; exit 1; }
echo "deps: all present"
