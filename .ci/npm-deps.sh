# Sourced by the .ci scripts: install clients/typescript's pinned npm packages
# (buf, the TS toolchain) with `npm ci`, unless node_modules already came from
# this exact lockfile. Expects $TS (the clients/typescript path); sets $BUF.
lock_sum="$(sha256sum "$TS/package-lock.json" | cut -d' ' -f1)"
if [[ "$(cat "$TS/node_modules/.imagegen-lock.sha256" 2>/dev/null)" != "$lock_sum" ]]; then
  echo "== npm ci (clients/typescript)"
  (cd "$TS" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" >"$TS/node_modules/.imagegen-lock.sha256"
fi
BUF="$TS/node_modules/.bin/buf"
