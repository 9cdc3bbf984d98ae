#!/bin/bash -e
# pi-gen runs this on the build host with ROOTFS_DIR set: the same Ansible role that
# provisions a box installs RadSetu into the image, over the chroot connection.
# RADSETU_SRC: the RadSetu checkout; RADSETU_WHEELHOUSE: wheels for the image's
# architecture and Python (docs/firmware.md says how to make them).
: "${ROOTFS_DIR:?ROOTFS_DIR is not set (run from pi-gen or build-rootfs.sh)}"
: "${RADSETU_SRC:?RADSETU_SRC must point at the RadSetu checkout}"
: "${RADSETU_WHEELHOUSE:?RADSETU_WHEELHOUSE must point at the wheelhouse}"

files="$(cd "$(dirname "$0")" && pwd)/files"
cd "${RADSETU_SRC}/ansible"
vars="$(mktemp --suffix=.json)"
trap 'rm -f "${vars}"' EXIT
cat >"${vars}" <<JSON
{"ansible_host": "${ROOTFS_DIR}", "ansible_connection": "community.general.chroot",
 "radsetu_wheelhouse": "${RADSETU_WHEELHOUSE}", "radsetu_start_services": false,
 "radsetu_broker_host": "unset", "radsetu_broker_port": 8883, "radsetu_pki_dir": "unused",
 "radsetu_ntp_servers": ["0.in.pool.ntp.org", "1.in.pool.ntp.org"]}
JSON
ansible-playbook playbooks/image.yml -i "image," -e "@${vars}"

install -m 0755 "${files}/radsetu-firstboot" "${ROOTFS_DIR}/usr/local/sbin/radsetu-firstboot"
install -m 0644 "${files}/radsetu-firstboot.service" "${ROOTFS_DIR}/etc/systemd/system/"
install -m 0755 "${files}/radsetu-data-crypt" "${ROOTFS_DIR}/usr/local/sbin/radsetu-data-crypt"
install -m 0644 "${files}/radsetu-data-unlock.service" "${ROOTFS_DIR}/etc/systemd/system/"
install -d -m 0755 "${ROOTFS_DIR}/etc/systemd/system.conf.d" "${ROOTFS_DIR}/etc/apt/apt.conf.d"
install -m 0644 "${files}/watchdog.conf" "${ROOTFS_DIR}/etc/systemd/system.conf.d/radsetu-watchdog.conf"
install -m 0644 "${files}/52radsetu-unattended" "${ROOTFS_DIR}/etc/apt/apt.conf.d/52radsetu-unattended"
install -m 0644 "${files}/20auto-upgrades" "${ROOTFS_DIR}/etc/apt/apt.conf.d/20auto-upgrades"
