#!/usr/bin/env bash
# Fails when src/gen/ is not what `npm run generate` would write from the
# current protos (../../protos, googleapis files included). Generates into a temp dir; touches
# nothing in the tree.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
node_modules/.bin/buf generate -o "$tmp"
if diff -ru src/gen "$tmp/src/gen"; then
  echo "generated code: fresh"
else
  echo "generated code: STALE, run 'npm run generate' in clients/typescript and commit src/gen" >&2
  exit 1
fi
