# Sourced by the cluster scripts: which python/ray/raylit to use, token auth for clients, and an optional
# dashboard tunnel. Not meant to be run on its own.

# Prefer the project's venv; fall back to whatever is on PATH.
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
RAY_BIN=${RAY_BIN:-$(dirname "$PY")/ray}
[ -x "$RAY_BIN" ] || RAY_BIN=ray
RAYLIT=("$PY" -m raylit.cli)

# Token authentication (Ray 2.52+): our cluster configs start every node with RAY_AUTH_MODE=token and the
# token from ~/.ray/auth_token; a client must opt in too, or the job server answers 401.
if [ -z "${RAY_AUTH_MODE:-}" ] && { [ -n "${RAY_AUTH_TOKEN:-}" ] || [ -n "${RAY_AUTH_TOKEN_PATH:-}" ] || \
                                     [ -f "$HOME/.ray/auth_token" ]; }; then
  export RAY_AUTH_MODE=token
fi

# open_tunnel <cluster.yaml>: `ray dashboard` port-forwards the head's dashboard to 127.0.0.1 over SSH for as
# long as this script runs (the dashboard listens on the head's loopback only; nothing is exposed publicly).
TUNNEL_PID=
open_tunnel() {
  local cfg=$1 port=${RAYLIT_DASHBOARD_PORT:-8265}
  "$RAY_BIN" dashboard --port "$port" "$cfg" >/tmp/raylit-tunnel-$$.log 2>&1 &
  TUNNEL_PID=$!
  trap close_tunnel EXIT
  for _ in $(seq 1 60); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      export RAY_API_SERVER_ADDRESS="http://127.0.0.1:$port"
      return 0
    fi
    kill -0 "$TUNNEL_PID" 2>/dev/null || break
    sleep 1
  done
  echo "could not open the dashboard tunnel for $cfg:" >&2
  cat /tmp/raylit-tunnel-$$.log >&2
  return 1
}
close_tunnel() {
  if [ -n "$TUNNEL_PID" ]; then
    kill "$TUNNEL_PID" 2>/dev/null || true
    wait "$TUNNEL_PID" 2>/dev/null || true
    TUNNEL_PID=
  fi
  rm -f /tmp/raylit-tunnel-$$.log
}
