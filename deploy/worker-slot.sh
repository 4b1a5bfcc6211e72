#!/bin/sh
# worker-slot.sh ROOT COMMAND...: run COMMAND with LEADSTREAM_DATA_DIR set to a state
# directory of its own under ROOT (ROOT/slot-0, slot-1, ...).
#
# Scaled compose workers (`docker compose up --scale worker=3`) share one named volume;
# each takes the first slot whose lock it can hold (flock on ROOT/slot-N.lock, kept by
# COMMAND for its whole life through an inherited file descriptor), so no two running
# workers ever share a Faust state directory, a restarted worker reuses a free slot
# (its tables resume from the changelogs at that slot's offsets), and the volume holds
# at most as many slots as workers ever ran at once.
set -eu
root=${1:?usage: worker-slot.sh ROOT COMMAND...}
shift
[ "$#" -gt 0 ] || { echo "worker-slot.sh: no command" >&2; exit 2; }
mkdir -p "$root"
i=0
while :; do
  exec 9>"$root/slot-$i.lock"
  if flock -n 9; then
    break
  fi
  i=$((i + 1))
  if [ "$i" -ge 1000 ]; then
    echo "worker-slot.sh: no free slot under $root" >&2
    exit 1
  fi
done
mkdir -p "$root/slot-$i"
export LEADSTREAM_DATA_DIR="$root/slot-$i"
echo "worker-slot.sh: state in $LEADSTREAM_DATA_DIR" >&2
exec "$@"
