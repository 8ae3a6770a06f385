#!/usr/bin/env bash
# Install what bench/run_proxy_bench.py needs (Debian/Ubuntu): nginx, Apache httpd with
# mod_auth_openidc, and wrk. Idempotent and quiet: it does nothing when everything is present.
# Run as root (or with sudo available). The distribution's services are not started or enabled
# by the harness: it launches private instances with its own configs under bench/.work/.
set -euo pipefail

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/sbin/apache2 ] || need+=(apache2)
[ -f /usr/lib/apache2/modules/mod_auth_openidc.so ] || need+=(libapache2-mod-auth-openidc)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    sudo_cmd=()
elif command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
else
    echo "bench/setup.sh: missing ${need[*]} and not root (no sudo): install them first" >&2
    exit 1
fi

echo "bench/setup.sh: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101 keeps the packages' postinst from starting nginx/apache2 on ports 80/443:
# the harness runs its own instances and a system service would only compete for the CPUs.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy" >/dev/null
    "${sudo_cmd[@]}" chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" -eq 1 ]; then "${sudo_cmd[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT

if ! "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
    "${sudo_cmd[@]}" apt-get update -qq >/dev/null
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
