#!/usr/bin/env bash
# Follow a raylit job's log until it ends (then print its status and, on failure, the tail of its log).
#   scripts/logs.sh [cluster.yaml] <job id> [raylit job logs options]
#   scripts/logs.sh [cluster.yaml] list          # the cluster's jobs
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_cluster_env.sh
if [ $# -gt 0 ] && [[ $1 == *.yaml || $1 == *.yml ]]; then
  open_tunnel "$1"
  shift
fi
job=${1:?usage: scripts/logs.sh [cluster.yaml] <job id>|list}
shift
if [ "$job" = list ]; then
  exec "${RAYLIT[@]}" job list "$@"
fi
status=0
"${RAYLIT[@]}" job logs "$job" --follow "$@" || status=$?
"${RAYLIT[@]}" job status "$job" || status=$?
exit $status
