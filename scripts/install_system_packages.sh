#!/bin/sh
# System packages the tests run for real, installed by `make install-dev` when missing:
#   - PostgreSQL's server (tests/postgres_fixtures.py starts a throwaway one per session);
#   - Prometheus and promtool (tests/deploy scrape a running stack and check the alerts);
#   - Chromium (tests/browser drive it with Playwright; no browser is downloaded).
# Installs them with apt-get when we are root; otherwise says what to install.
set -eu

have_postgres() {
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1
}
have_chromium() {
    command -v chromium >/dev/null 2>&1
}
have_prometheus() {
    command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1
}

missing=""
have_postgres || missing="$missing postgresql"
have_prometheus || missing="$missing prometheus"
have_chromium || missing="$missing chromium"
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing$missing (the tests run them)"
    apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    have_postgres && have_prometheus && have_chromium && exit 0
fi
echo "missing system packages:$missing (e.g. sudo apt-get install$missing);" \
     "the tests need them" >&2
exit 1
