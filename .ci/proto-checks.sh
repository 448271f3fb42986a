#!/usr/bin/env bash
# Proto quality gates: buf format, buf lint (STANDARD + COMMENTS) and buf breaking
# (FILE) against the committed baseline image protos/baseline/imagegen-v1.binpb.
#
# buf comes from the npm registry (@bufbuild/buf, pinned in
# clients/typescript/package.json + package-lock.json); nothing else is fetched.
#
#   bash .ci/proto-checks.sh                    # run the gates
#   bash .ci/proto-checks.sh --update-baseline  # after a release (or an accepted
#                                               # pre-release break): rewrite the baseline
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TS="$ROOT/clients/typescript"
BASELINE="protos/baseline/imagegen-v1.binpb"

# shellcheck source=.ci/npm-deps.sh
source "$ROOT/.ci/npm-deps.sh"
cd "$ROOT"
echo "== buf $("$BUF" --version)"

if [[ "${1:-}" == "--update-baseline" ]]; then
  "$BUF" build --exclude-source-info -o "$BASELINE"
  echo "wrote $BASELINE; commit it"
  exit 0
fi

passed=0
failed=0
gate() { # gate NAME CMD...: run one gate, count it
  local name="$1"; shift
  if "$@"; then echo "$name: ok"; passed=$((passed + 1)); else echo "$name: FAILED"; failed=$((failed + 1)); fi
}
echo "== buf format --diff --exit-code (fix: $BUF format -w)"
gate format "$BUF" format --diff --exit-code

echo "== buf lint (STANDARD, COMMENTS)"
gate lint "$BUF" lint

echo "== buf breaking --against $BASELINE (FILE)"
gate breaking "$BUF" breaking --against "$BASELINE"

echo "proto-checks: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
