# Sourced by scripts/test: headless Chromium and its driver (Debian's packages) for
# the dashboard's browser tests.  Installed when missing and we are root; without
# them the browser tests are skipped outside CI and fail in CI.

ensure_browser() {
    if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing Chromium and chromedriver (Debian packages)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
    fi
    if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
        echo "!! Chromium is not installed and cannot be: browser tests will be SKIPPED (FAIL in CI)" >&2
    fi
}
