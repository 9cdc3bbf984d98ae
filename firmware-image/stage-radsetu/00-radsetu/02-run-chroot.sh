#!/bin/bash -e
# Inside the image: the first boot makes it a clinic's box; the data partition
# (encrypted, opened at boot by radsetu-data-unlock) is mounted where the box keeps
# its studies; security updates install themselves.
systemctl enable radsetu-firstboot.service
systemctl enable radsetu-data-unlock.service
systemctl enable unattended-upgrades.service
if ! grep -q 'LABEL=RADSETU-DATA' /etc/fstab; then
	echo 'LABEL=RADSETU-DATA /var/lib/radsetu ext4 defaults,noatime,commit=5,nofail,x-systemd.device-timeout=30s 0 2' >>/etc/fstab
fi
