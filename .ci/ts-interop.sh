#!/usr/bin/env bash
# TypeScript client gates and the TS <-> Python interop suite:
#   1. npm ci in clients/typescript (pinned by package-lock.json)
#   2. src/gen is fresh (buf generate into a temp dir, diff)
#   3. tsc strict build (src, tests, example)
#   4. start the Gemini emulator and the real Python gRPC server (and a second one with mutual TLS
#      and a tokens file, certificates made at run time, for the client's TLS and token options)
#   5. buf curl: reflection (v1 and v1alpha) lists the 5 RPCs; ListModels and Generate as JSON
#   6. the example script against the server
#   7. node --test: unit tests + the interop suite against the server
#
# Python: $PYTHON, else the active venv ($VIRTUAL_ENV), else ./.venv, else
# python3; it must import imagegen_server (pip install -e '.[dev]').
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TS="$ROOT/clients/typescript"
SERVICE="imagegen.v1.ImageGenerationService"

# --- 1. npm ci (shared with the other .ci scripts)
# shellcheck source=.ci/npm-deps.sh
source "$ROOT/.ci/npm-deps.sh"

# --- 2. generated code is fresh
echo "== generated TypeScript is fresh"
bash "$TS/scripts/check-generated.sh"

# --- 3. strict type check + build (tsconfig: strict, noUncheckedIndexedAccess)
echo "== tsc (strict)"
(cd "$TS" && rm -rf dist && node_modules/.bin/tsc -p .)

# --- 4. the servers
pick_python() {
  local c
  for c in "${PYTHON:-}" "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" "$ROOT/.venv/bin/python" python3 python; do
    [[ -n "$c" ]] || continue
    if "$c" -c 'import imagegen_server' >/dev/null 2>&1; then echo "$c"; return 0; fi
  done
  echo "ts-interop: no Python that imports imagegen_server (set PYTHON=...)" >&2
  return 1
}
PY="$(pick_python)"
echo "== python: $PY"

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
EMU_PORT="$(free_port)"
GRPC_PORT="$(free_port)"
while [[ "$GRPC_PORT" == "$EMU_PORT" ]]; do GRPC_PORT="$(free_port)"; done

LOGS="$(mktemp -d)"
EMU_PID=""
SRV_PID=""
TLS_PID=""
cleanup() {
  local rc=$?
  # Stop only the processes this script started.
  [[ -n "$SRV_PID" ]] && kill "$SRV_PID" 2>/dev/null || true
  [[ -n "$TLS_PID" ]] && kill "$TLS_PID" 2>/dev/null || true
  [[ -n "$TLS_PID" ]] && wait "$TLS_PID" 2>/dev/null || true
  [[ -n "$EMU_PID" ]] && kill "$EMU_PID" 2>/dev/null || true
  [[ -n "$SRV_PID" ]] && wait "$SRV_PID" 2>/dev/null || true
  [[ -n "$EMU_PID" ]] && wait "$EMU_PID" 2>/dev/null || true
  if [[ $rc -ne 0 ]]; then
    echo "---- emulator log (tail)"; tail -n 40 "$LOGS/emulator.log" 2>/dev/null || true
    echo "---- server log (tail)"; tail -n 60 "$LOGS/server.log" 2>/dev/null || true
    echo "---- TLS server log (tail)"; tail -n 30 "$LOGS/server-tls.log" 2>/dev/null || true
  fi
  rm -rf "$LOGS"
  exit $rc
}
trap cleanup EXIT

wait_port() { # wait_port PORT PID NAME: until a TCP connect succeeds (60 s max)
  local port="$1" pid="$2" name="$3" i
  for ((i = 0; i < 600; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then echo "ts-interop: $name exited before listening" >&2; return 1; fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "ts-interop: $name not listening on $port after 60 s" >&2
  return 1
}

EMU_URL="http://127.0.0.1:$EMU_PORT"
echo "== emulator on $EMU_URL"
"$PY" -m imagegen_server emulator --host 127.0.0.1 --port "$EMU_PORT" --api-key test-key >"$LOGS/emulator.log" 2>&1 &
EMU_PID=$!
wait_port "$EMU_PORT" "$EMU_PID" emulator

echo "== server on 127.0.0.1:$GRPC_PORT (upstream: the emulator)"
# A large retry budget: the budget is shared by all requests, so without this
# the order of the tests (how many scripted failures ran before the 429 ->
# success stream) would decide whether that stream may retry at all.
GEMINI_API_KEY=test-key IMAGEGEN_RETRY_BUDGET_TOKENS=1000 "$PY" -m imagegen_server serve --host 127.0.0.1 --port "$GRPC_PORT" \
  --upstream-url "$EMU_URL" >"$LOGS/server.log" 2>&1 &
SRV_PID=$!
wait_port "$GRPC_PORT" "$SRV_PID" server

# A second server for the client's TLS, mutual TLS and bearer-token options: certificates made now
# (tests/certificates.py), a tokens file holding one ListModels-only caller.
TLS_PORT="$(free_port)"
while [[ "$TLS_PORT" == "$EMU_PORT" || "$TLS_PORT" == "$GRPC_PORT" ]]; do TLS_PORT="$(free_port)"; done
TLS_DIR="$LOGS/tls"
TLS_TOKEN="ts-viewer-token-$RANDOM$RANDOM"
mkdir -p "$TLS_DIR"
(cd "$ROOT" && TLS_TOKEN="$TLS_TOKEN" "$PY" - "$TLS_DIR" <<'PYEOF'
import hashlib, os, shutil, sys
from pathlib import Path
from tests.certificates import CertificateAuthority
out = Path(sys.argv[1])
ca = CertificateAuthority(out, "ca")  # writes ca.pem
server = ca.issue("imagegen-server", server=True, file_stem="server")
client = ca.issue("ts-client", file_stem="client")
(out / "other").mkdir()
other = CertificateAuthority(out / "other", "other-ca")
shutil.copy(other.cert_path, out / "other-ca.pem")
digest = hashlib.sha256(os.environ["TLS_TOKEN"].encode()).hexdigest()
(out / "tokens.toml").write_text(
    f'[[callers]]\nname = "ts-viewer"\ntoken_sha256 = "{digest}"\n'
    'methods = ["imagegen.v1.ImageGenerationService/ListModels"]\n'
)
PYEOF
)
echo "== TLS server on 127.0.0.1:$TLS_PORT (mutual TLS + tokens file)"
GEMINI_API_KEY=test-key "$PY" -m imagegen_server serve --host 127.0.0.1 --port "$TLS_PORT" \
  --upstream-url "$EMU_URL" --tls-cert "$TLS_DIR/server.crt" --tls-key "$TLS_DIR/server.key" \
  --tls-client-ca "$TLS_DIR/ca.pem" --auth-tokens-file "$TLS_DIR/tokens.toml" >"$LOGS/server-tls.log" 2>&1 &
TLS_PID=$!
wait_port "$TLS_PORT" "$TLS_PID" "TLS server"

# --- 5. generic tools: buf curl through server reflection
# Both reflection protocols, each forced (by default buf tries v1, then v1alpha).
for proto in grpc-v1 grpc-v1alpha; do
  echo "== buf curl --list-methods --reflect-protocol $proto"
  methods="$("$BUF" curl --protocol grpc --http2-prior-knowledge --reflect-protocol "$proto" --list-methods "http://127.0.0.1:$GRPC_PORT")"
  echo "$methods"
  for m in Generate GenerateStream Refine RefineStream ListModels; do
    grep -qx "$SERVICE/$m" <<<"$methods" || { echo "ts-interop: buf curl ($proto) did not list $SERVICE/$m" >&2; exit 1; }
  done
  echo "buf curl ($proto): all 5 methods listed"
done

echo "== buf curl ListModels"
"$BUF" curl --protocol grpc --http2-prior-knowledge -d '{}' \
  "http://127.0.0.1:$GRPC_PORT/$SERVICE/ListModels" >"$LOGS/models.json"
"$PY" -c 'import json, sys; names = [m["name"] for m in json.load(open(sys.argv[1]))["models"]]; assert names, names; print("models:", ", ".join(names))' "$LOGS/models.json"

echo "== buf curl Generate"
"$BUF" curl --protocol grpc --http2-prior-knowledge \
  -d '{"prompt": "a red fox", "options": {"aspectRatio": "1:1", "seed": 1}}' \
  "http://127.0.0.1:$GRPC_PORT/$SERVICE/Generate" >"$LOGS/generate.json"
"$PY" -c '
import base64, json, sys
g = json.load(open(sys.argv[1]))["generation"]
data = base64.b64decode(g["image"]["data"])
assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
print("generate:", g["image"]["width"], "x", g["image"]["height"], g["image"]["mimeType"], len(data), "bytes")
' "$LOGS/generate.json"

# --- 6. the example script runs as documented
echo "== example (clients/typescript/examples/generate.ts)"
(cd "$LOGS" && node "$TS/dist/examples/generate.js" "127.0.0.1:$GRPC_PORT" "a lighthouse" && ls out-1.png out-2.png out-3.png >/dev/null)

# --- 7. the TypeScript suite
echo "== node --test (unit + interop)"
cd "$TS"
IMAGEGEN_TLS_ADDRESS="127.0.0.1:$TLS_PORT" IMAGEGEN_TLS_DIR="$TLS_DIR" IMAGEGEN_TLS_TOKEN="$TLS_TOKEN" \
IMAGEGEN_ADDRESS="127.0.0.1:$GRPC_PORT" IMAGEGEN_EMULATOR_URL="$EMU_URL" \
  node --test --test-reporter=spec --test-timeout=120000 dist/test/
