#!/usr/bin/env bash
# Installs what the test suite needs (Debian packages, only when missing) and
# runs every test: codec unit tests, the real binary over real sockets,
# end-to-end runs behind real lighttpd, nginx, Apache and Caddy, Redis and
# promtool, and attacks (including a vanished peer in network namespaces,
# hence root).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v lighttpd >/dev/null || need+=(lighttpd)
command -v nginx >/dev/null || need+=(nginx)
command -v cgi-fcgi >/dev/null || need+=(libfcgi-bin)
command -v php >/dev/null || need+=(php-cli)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v ip >/dev/null || need+=(iproute2)
command -v setpriv >/dev/null || need+=(util-linux)
command -v prlimit >/dev/null || need+=(util-linux)
command -v redis-server >/dev/null || need+=(redis-server)
command -v promtool >/dev/null || need+=(prometheus)
command -v zsh >/dev/null || need+=(zsh)
command -v apache2 >/dev/null || [ -x /usr/sbin/apache2 ] || need+=(apache2)
command -v caddy >/dev/null || need+=(caddy)
command -v groff >/dev/null || need+=(groff-base)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    # Keep the packages' init scripts from starting system-wide servers on
    # ports 80/443: the tests start their own, on free ports.
    policy=/usr/sbin/policy-rc.d
    added_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod +x "$policy"
        added_policy=1
    fi
    echo "installing test dependencies: ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
    [ -z "$added_policy" ] || $sudo rm -f "$policy"
fi

# The package test builds a .deb with the cargo-deb tool.
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet

cargo test --all-targets
