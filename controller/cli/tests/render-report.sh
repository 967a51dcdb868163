#!/usr/bin/env bash
# Renders a coldsite HTML report in headless Chromium and checks what a person would see.
#
#   render-report.sh --install                  install Chromium (Debian package) if missing; quick when present
#   render-report.sh REPORT.html [STEP_ID...]   check the rendered DOM, and take a screenshot
#
# The check: the DOM Chromium builds from the page has an <svg> with one or more bars, and
# every STEP_ID given, both as a bar (data-step) and in the steps table. The screenshot goes
# to REPORT.png (or $SCREENSHOT). Exits 0 when all is there, 1 when something is missing,
# 77 when no Chromium is installed.
set -euo pipefail

find_chromium() {
  if [ -n "${CHROMIUM:-}" ]; then echo "$CHROMIUM"; return 0; fi
  for c in chromium chromium-browser google-chrome; do
    if command -v "$c" >/dev/null 2>&1; then command -v "$c"; return 0; fi
  done
  return 1
}

if [ "${1:-}" = "--install" ]; then
  if find_chromium >/dev/null; then
    echo "chromium: $(find_chromium)"
    exit 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
  echo "chromium: installed $(find_chromium)"
  exit 0
fi

report="${1:?usage: render-report.sh --install | REPORT.html [STEP_ID...]}"
shift
chromium="$(find_chromium)" || { echo "chromium is not installed (render-report.sh --install installs it)" >&2; exit 77; }
report="$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
screenshot="${SCREENSHOT:-${report%.html}.png}"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
       --disable-sync --no-first-run --user-data-dir="$profile")

dom="$profile/dom.html"
timeout 120 "$chromium" "${flags[@]}" --dump-dom "file://$report" >"$dom" 2>"$profile/stderr" || {
  echo "chromium failed to render $report:" >&2
  tail -20 "$profile/stderr" >&2
  exit 1
}

missing=0
grep -q '<svg' "$dom" || { echo "no <svg> in the rendered page" >&2; missing=1; }
bars=$(grep -o '<rect class="bar"' "$dom" | wc -l)
[ "$bars" -gt 0 ] || { echo "no bars in the Gantt chart" >&2; missing=1; }
for id in "$@"; do
  grep -qF "data-step=\"$id\"" "$dom" || { echo "no bar for step $id" >&2; missing=1; }
  grep -qF "<td class=\"id\">$id</td>" "$dom" || { echo "step $id is not in the steps table" >&2; missing=1; }
done

timeout 120 "$chromium" "${flags[@]}" --hide-scrollbars --window-size=1100,1800 --screenshot="$screenshot" \
  "file://$report" >/dev/null 2>>"$profile/stderr" || { echo "chromium could not take a screenshot" >&2; exit 1; }
[ -s "$screenshot" ] || { echo "empty screenshot $screenshot" >&2; exit 1; }

echo "rendered $report: $bars bars, $# step ids checked; screenshot $screenshot"
exit "$missing"
