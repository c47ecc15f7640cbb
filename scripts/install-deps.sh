#!/usr/bin/env bash
# install-deps.sh installs the servers cachesync's tests, demo and benchmarks
# need (redis-server, PostgreSQL) and the headless browser of the dashboard
# test (chromium, chromium-driver) from Debian packages, only when missing.
# It never starts a system service and is idempotent.
set -euo pipefail

pkgs=()
if ! command -v redis-server >/dev/null 2>&1; then
	pkgs+=(redis-server)
fi
if ! command -v redis-cli >/dev/null 2>&1; then
	pkgs+=(redis-tools)
fi
if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
	pkgs+=(postgresql)
fi
if ! command -v psql >/dev/null 2>&1 || ! command -v pg_recvlogical >/dev/null 2>&1; then
	pkgs+=(postgresql-client)
fi
if ! command -v chromium >/dev/null 2>&1; then
	pkgs+=(chromium)
fi
if ! command -v chromedriver >/dev/null 2>&1; then
	pkgs+=(chromium-driver)
fi

if [ "${#pkgs[@]}" -eq 0 ]; then
	exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
	sudo=(sudo)
fi

# Forbid invoke-rc.d from starting services during the install; remove the
# policy file afterwards only if we created it.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
	"${sudo[@]}" chmod 755 "$policy"
	created_policy=1
fi
cleanup() {
	if [ "$created_policy" -eq 1 ]; then
		"${sudo[@]}" rm -f "$policy"
	fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null

for p in "${pkgs[@]}"; do
	echo "deps: installed $p"
done
