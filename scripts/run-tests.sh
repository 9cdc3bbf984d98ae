#!/bin/bash
# make test's pytest runs, after the lint, as two streams at once:
#  - the background: the Debian-root image test (its five minutes go to debootstrap,
#    dpkg and Ansible), then the hub's index tests again on a real PostgreSQL, then the
#    heaviest self-contained tests ($BESIDE_TESTS);
#  - the foreground: every other test (SQLite for the hub's index).
# The foreground mostly waits on sockets and child processes (it uses about one of the
# two cores), so the background has the other. Tests that share a system service (the
# CUPS scheduler) take turns through a lock (tests/conftest.py); all else is per process.
# Each run's output is shown; the exit status fails if any of them failed.
set -u
PY="${PY:-.venv/bin/python}"
IMAGE_TEST="tests/system/test_provisioning.py::test_image_stage_roles_and_first_boot_in_a_debian_root"
read -r -a HUB_INDEX_TESTS <<<"${HUB_INDEX_TESTS:-tests/hub}"
read -r -a BESIDE_TESTS <<<"${BESIDE_TESTS:-}"
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)
mkdir -p build
rm -f build/*.rc
logs=(build/image-test.log build/postgres-pass.log build/beside.log)
(
	"${PYTEST[@]}" --durations=1 "$IMAGE_TEST" >"${logs[0]}" 2>&1
	echo $? >build/image-test.rc
	"${PYTEST[@]}" --durations=5 --hub-index=postgres "${HUB_INDEX_TESTS[@]}" >"${logs[1]}" 2>&1
	echo $? >build/postgres-pass.rc
	if [ "${#BESIDE_TESTS[@]}" -gt 0 ]; then
		"${PYTEST[@]}" --durations=5 "${BESIDE_TESTS[@]}" >"${logs[2]}" 2>&1
		echo $? >build/beside.rc
	else
		echo "(none)" >"${logs[2]}"
		echo 0 >build/beside.rc
	fi
) &
background=$!
echo "in the background: the Debian-root image test, the PostgreSQL pass, then" \
	"${BESIDE_TESTS[*]:-nothing more} (output in ${logs[*]}, shown at the end)"

ignore=()
for t in "${BESIDE_TESTS[@]}"; do ignore+=(--ignore "$t"); done
start=$SECONDS
"${PYTEST[@]}" --durations=15 --deselect "$IMAGE_TEST" "${ignore[@]}"
main=$?
echo "--- the other tests took $((SECONDS - start)) s; waiting for the background"
wait "$background"
status() { cat "build/$1.rc" 2>/dev/null || echo 1; }
img=$(status image-test)
pg=$(status postgres-pass)
beside=$(status beside)
echo "--- the Debian-root image test:"
cat "${logs[0]}"
echo "--- the hub's index tests on PostgreSQL:"
cat "${logs[1]}"
echo "--- beside them:"
cat "${logs[2]}"
echo "--- exit status: other tests $main, image test $img, PostgreSQL pass $pg," \
	"beside $beside (after $SECONDS s)"
[ "$main" -eq 0 ] && [ "$img" -eq 0 ] && [ "$pg" -eq 0 ] && [ "$beside" -eq 0 ]
