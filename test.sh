#!/usr/bin/env bash
# Runs every test of coldsite: unit, property and example tests, and the end-to-end suite
# against real kube-apiservers with the real VolSync controller and snapshot-controller at
# each site. The first run builds them from Go modules into ~/.cache/coldsite (many
# minutes), and builds what ships (dist/build.sh); later runs reuse them. Checks that could
# not run here are listed at the end.
set -euo pipefail
cd "$(dirname "$0")"
if [ -x e2e/controlplane/build.sh ]; then
  e2e/controlplane/build.sh
fi
# The tests run the controller from the image it builds, and install the plugin from its tarball.
dist/build.sh
COLDSITE_SKIPS_FILE="$(mktemp)"
export COLDSITE_SKIPS_FILE
report_skips() {
  if [ -s "$COLDSITE_SKIPS_FILE" ]; then
    echo
    echo "== skipped checks (not run on this machine) =="
    sort -u "$COLDSITE_SKIPS_FILE" | sed 's/^/  - /'
  else
    echo
    echo "== no checks were skipped =="
  fi
  rm -f "$COLDSITE_SKIPS_FILE"
}
trap report_skips EXIT
# A failing e2e test prints its error and the controller's log; anyhow's backtraces would
# crowd them out of a CI log's tail. Panics still print theirs.
export RUST_LIB_BACKTRACE="${RUST_LIB_BACKTRACE:-0}"
cargo test --workspace --all-targets "$@"
