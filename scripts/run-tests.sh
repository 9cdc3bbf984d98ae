#!/bin/bash
# make test's pytest runs, after the lint:
#  1. the Debian-root image test, in the background from the start: its five minutes go
#     to debootstrap, dpkg and Ansible, while the rest of the suite mostly waits on
#     sockets and child processes (the whole suite used about one of the two cores);
#  2. every other test (SQLite for the hub's index);
#  3. the hub's index tests again on a real PostgreSQL.
# Each run's output is shown; the exit status fails if any of them failed.
set -u
PY="${PY:-.venv/bin/python}"
IMAGE_TEST="tests/system/test_provisioning.py::test_image_stage_roles_and_first_boot_in_a_debian_root"
read -r -a HUB_INDEX_TESTS <<<"${HUB_INDEX_TESTS:-tests/hub}"
mkdir -p build
log=build/image-test.log
"$PY" -m pytest -q -p no:cacheprovider --durations=1 "$IMAGE_TEST" >"$log" 2>&1 &
image=$!
echo "the Debian-root image test runs beside the others (output: $log, shown at the end)"

"$PY" -m pytest -q -p no:cacheprovider --durations=15 --deselect "$IMAGE_TEST"
main=$?
"$PY" -m pytest -q -p no:cacheprovider --hub-index=postgres "${HUB_INDEX_TESTS[@]}"
pg=$?
wait "$image"
img=$?
echo "--- the Debian-root image test:"
cat "$log"
echo "--- exit status: other tests $main, PostgreSQL pass $pg, image test $img"
[ "$main" -eq 0 ] && [ "$pg" -eq 0 ] && [ "$img" -eq 0 ]
