#!/usr/bin/env bash
# Runs every test of coldsite: unit, property and example tests, and the end-to-end suite
# against a real kube-apiserver. The first run builds that control plane from Go modules into
# ~/.cache/coldsite (many minutes); later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")"
if [ -x e2e/controlplane/build.sh ]; then
  e2e/controlplane/build.sh
fi
cargo test --workspace --all-targets "$@"
