#!/usr/bin/env bash
# Tear down a cluster started with scripts/cluster_up.sh:
#   scripts/cluster_down.sh cluster_configs/aws-cpu.yaml [more `ray down` options]
# Cloud configs: the instances are terminated. On-premise (`local` provider): Ray runs `ray stop` over SSH on
# every listed machine, which stops *all* Ray processes of that user there, not only this cluster's.
# Checkpoints in s3:// / gs:// stay; anything on the nodes' disks is gone.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_cluster_env.sh
cfg=${1:?usage: scripts/cluster_down.sh <cluster.yaml> [ray down options]}
shift
if grep -qE '^\s*type:\s*local\s*$' "$cfg"; then
  export RAY_UP_enable_autoscaler_v2=0
fi
exec "$RAY_BIN" down -y "$cfg" "$@"
