#!/usr/bin/env bash
# Bring up a Ray cluster for raylit from a `ray up` config:
#   scripts/cluster_up.sh cluster_configs/aws-cpu.yaml [more `ray up` options]
# 1. refuses a config that still has YOUR-... placeholders;
# 2. builds the raylit wheel into dist/ (the configs install it on every node from there);
# 3. makes sure ~/.ray/auth_token exists (the configs copy it to every node: token authentication);
# 4. runs `ray up -y` (for the on-premise `local` provider with RAY_UP_enable_autoscaler_v2=0, without
#    which Ray 2.60 never starts the listed workers).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_cluster_env.sh
cfg=${1:?usage: scripts/cluster_up.sh <cluster.yaml> [ray up options]}
shift
if grep -nE '^[^#]*YOUR-' "$cfg" >&2; then
  echo "$cfg: replace the YOUR-... placeholders above first (see cluster_configs/README.md)" >&2
  exit 2
fi

echo "building the raylit wheel into dist/" >&2
rm -f dist/raylit-*.whl
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w dist . >&2
ls dist/raylit-*.whl >&2

"$RAY_BIN" get-auth-token --generate >/dev/null

if grep -qE '^\s*type:\s*local\s*$' "$cfg"; then
  export RAY_UP_enable_autoscaler_v2=0
fi
"$RAY_BIN" up -y "$cfg" "$@"

cat >&2 <<MSG

Cluster is up. Submit a run (opens a dashboard tunnel for its duration):
  scripts/submit.sh $cfg -- fit --config examples/configs/classifier.yaml
or keep a tunnel open yourself and use raylit directly:
  $RAY_BIN dashboard $cfg &      # http://127.0.0.1:8265
  RAY_AUTH_MODE=token raylit submit --address http://127.0.0.1:8265 -- fit --config examples/configs/classifier.yaml
Tear it down with: scripts/cluster_down.sh $cfg
MSG
