#!/usr/bin/env bash
# CI for the other-language examples: starts `puente serve --dev` in a temporary directory,
# runs the Python example against it, then the buf curl cheat-sheet of docs/clients.md, exactly
# as written there, and stops the server, which must drain and exit 0. Exits non-zero on any
# failure. Run from anywhere: bash examples/python/ci.sh
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$repo/$target" ;; esac

# The venv lives in the target directory, so it is reused between runs and never committed.
venv="$target/python-example-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$repo/examples/python/requirements.txt"

(cd "$repo" && cargo build --locked --bin puente)
puente="$target/debug/puente"

# The development PKI goes to ./certs/dev of the working directory: a temporary one, so the
# repository's own certs/ is never touched.
work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

"$puente" serve --dev --listen 127.0.0.1:0 --data-dir "$work/data" >server.out 2>server.log &
server_pid=$!

# The server prints "listening on ADDR" once the PKI, profiles and demo agencies are ready.
addr=""
for _ in $(seq 1 300); do
  addr="$(sed -n 's/^listening on //p' server.out)"
  [ -n "$addr" ] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "the server exited before listening:" >&2
    cat server.log >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "the server printed no 'listening on' line within 30 s:" >&2
  cat server.log >&2
  exit 1
fi
echo "server listening on $addr (data and PKI in $work)"

echo "-- python example"
"$venv/bin/python" "$repo/examples/python/puente_client.py" --profiles certs/dev/profiles.toml

# Each part stops the script at its first failure, so reaching the summary means all passed.
passed=1 skipped=0

echo "-- buf curl cheat-sheet (docs/clients.md)"
if command -v npx >/dev/null 2>&1; then
  buf() { npx --yes @bufbuild/buf@1.75.0 "$@"; }
  # The fenced block after the marker line, continuation lines joined, `buf curl` lines kept.
  mapfile -t commands < <(
    awk '/<!-- cheat-sheet: run by examples\/python\/ci.sh -->/ { marked = 1; next }
         marked && /^```/ { if (inside) exit; inside = 1; next }
         inside' "$repo/docs/clients.md" |
      sed -e ':join' -e '/\\$/{N;s/\\\n *//;b join' -e '}' |
      grep '^buf curl '
  )
  if [ "${#commands[@]}" -lt 3 ]; then
    echo "found ${#commands[@]} buf curl commands in the cheat-sheet of docs/clients.md, expected more" >&2
    exit 1
  fi
  # The cheat-sheet's commands name the server by PUENTE_URL; its certificate is also for 127.0.0.1.
  export PUENTE_URL="https://$addr"
  : >buf.out
  for command in "${commands[@]}"; do
    echo "\$ $command"
    eval "$command" | tee -a buf.out
  done
  # What the commands must have shown: methods through reflection, health, the directory as an
  # agency, a send, the recipient's inbox, and the checkpoint as the auditor.
  for expected in 'puente.v1.ExchangeService/SendMessage' '"status": "SERVING"' \
    '"agencyId": "CO-DIJIN"' '"messageId"' '"subject": "New synthetic opioid seized in Rotterdam"' \
    '"treeSize"'; do
    if ! grep -qF "$expected" buf.out; then
      echo "the cheat-sheet's output lacks $expected" >&2
      exit 1
    fi
  done
  passed=$((passed + 1))
else
  echo "buf curl cheat-sheet skipped: npx is not installed"
  skipped=1
fi

echo "-- stopping the server (SIGTERM drains, then exit 0)"
kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=""
if [ "$status" -ne 0 ]; then
  echo "the server exited with status $status after SIGTERM:" >&2
  cat server.log >&2
  exit 1
fi
echo "examples: $passed passed, 0 failed, $skipped skipped"
