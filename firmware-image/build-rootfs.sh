#!/bin/bash
# Build the box's root filesystem the way the pi-gen stage does, for this machine's
# architecture (an ARM build under QEMU takes 30-40 min: too slow for CI): debootstrap
# a Debian root, then run stage-radsetu's steps on it. For the real SD-card image, put
# stage-radsetu into pi-gen (docs/firmware.md).
#
#   firmware-image/build-rootfs.sh DIR [WHEELHOUSE]
set -euo pipefail

ROOTFS_DIR="${1:?usage: build-rootfs.sh DIR [WHEELHOUSE]}"
here="$(cd "$(dirname "$0")" && pwd)"
RADSETU_SRC="$(dirname "${here}")"
RADSETU_WHEELHOUSE="${2:-${RADSETU_SRC}/ansible/wheelhouse}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
stage="${here}/stage-radsetu/00-radsetu"
export ROOTFS_DIR RADSETU_SRC RADSETU_WHEELHOUSE

if [ ! -x "${ROOTFS_DIR}/usr/bin/python3" ]; then
	debootstrap --variant=minbase --include=python3 bookworm "${ROOTFS_DIR}" "${MIRROR}"
fi
# no service starts inside the root while it is built (nginx or mosquitto would bind
# this machine's ports); pi-gen does the same and removes the file when it exports
printf '#!/bin/sh\nexit 101\n' >"${ROOTFS_DIR}/usr/sbin/policy-rc.d"
chmod 0755 "${ROOTFS_DIR}/usr/sbin/policy-rc.d"
# 00-packages, as pi-gen installs them
mapfile -t packages < <(grep -v '^#' "${stage}/00-packages")
chroot "${ROOTFS_DIR}" env DEBIAN_FRONTEND=noninteractive \
	apt-get install -y -q --no-install-recommends "${packages[@]}"
"${stage}/01-run.sh"
cp "${stage}/02-run-chroot.sh" "${ROOTFS_DIR}/tmp/02-run-chroot.sh"
chroot "${ROOTFS_DIR}" bash -e /tmp/02-run-chroot.sh
rm -f "${ROOTFS_DIR}/tmp/02-run-chroot.sh"
echo "root filesystem ready in ${ROOTFS_DIR}"
