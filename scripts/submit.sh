#!/usr/bin/env bash
# Submit a raylit run to a cluster as a Ray job, follow its log, and print where the checkpoints are.
#   scripts/submit.sh [cluster.yaml] [raylit submit options] -- fit --config run.yaml [overrides]
# With a `ray up` config as first argument, the head's dashboard is port-forwarded for the duration;
# without one, the address comes from --address / RAY_API_SERVER_ADDRESS / RAY_ADDRESS (e.g. a
# `kubectl port-forward` to a KubeRay head). Ctrl-C stops following; the job keeps running.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_cluster_env.sh
if [ $# -gt 0 ] && [[ $1 == *.yaml || $1 == *.yml ]]; then
  open_tunnel "$1"
  shift
fi
"${RAYLIT[@]}" submit "$@"
