#!/usr/bin/env bash
# Refresh the console's vendored JavaScript and CSS from the npm registry (`make vendor`).
# Versions are pinned here; the files are committed as package data, so the console needs
# no network and no build step at run time. Each library's licence is kept beside it.
set -euo pipefail
HTMX_VERSION=2.0.11
UPLOT_VERSION=1.6.32
dest="$(cd "$(dirname "$0")" && pwd)/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "htmx.org@${HTMX_VERSION}" "uplot@${UPLOT_VERSION}" >/dev/null
mkdir htmx uplot
tar -xzf "htmx.org-${HTMX_VERSION}.tgz" -C htmx
tar -xzf "uplot-${UPLOT_VERSION}.tgz" -C uplot
mkdir -p "$dest"
cp htmx/package/dist/htmx.min.js "$dest/htmx.min.js"
cp htmx/package/LICENSE "$dest/htmx.LICENSE"
cp uplot/package/dist/uPlot.iife.min.js "$dest/uPlot.iife.min.js"
cp uplot/package/dist/uPlot.min.css "$dest/uPlot.min.css"
cp uplot/package/LICENSE "$dest/uPlot.LICENSE"
cat > "$dest/VERSIONS" <<END
htmx.org ${HTMX_VERSION}
uplot ${UPLOT_VERSION}
END
echo "vendored htmx ${HTMX_VERSION} and uPlot ${UPLOT_VERSION} into ${dest}"
