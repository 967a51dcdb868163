#!/usr/bin/env bash
# Builds what coldsite ships, from this checkout, without a container daemon:
#   coldsite-controller-<version>.oci.tar     the controller's image (dist/Containerfile) as an
#                                             OCI archive tagged <version>, built by buildah
#                                             (vfs storage, chroot isolation, fixed timestamp)
#   coldsite-controller-<version>.cdx.json    its SBOM: the controller's crates (CycloneDX)
#   kubectl-coldsite-<version>-linux-amd64.tar.gz  the plugin and its completer, static
#   SHA256SUMS                                sums of the three files above
#   coldsite.yaml                             the krew manifest, with the tarball's sum
# after checking every dependency's licence against deny.toml (cargo-deny).
#
# Usage:
#   build.sh               build into target/dist (or $COLDSITE_DIST_DIR)
#   build.sh --print-dir   print that directory
#
# Environment:
#   COLDSITE_RELEASE_URL   where the plugin tarball will be downloadable from, for the krew
#                          manifest (default: the GitHub release of this version)
#
# Binaries are static (musl) release builds. Tools it needs and installs when missing:
# the musl target (rustup), musl-tools, buildah and skopeo (Debian packages), and cargo-deny and
# cargo-cyclonedx (crates.io, into ${COLDSITE_CACHE:-~/.cache/coldsite}/cargo-tools).
set -euo pipefail

CARGO_DENY_VERSION=0.20.2
CARGO_CYCLONEDX_VERSION=0.5.9
TARGET=x86_64-unknown-linux-musl

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CACHE_ROOT=${COLDSITE_CACHE:-$HOME/.cache/coldsite}
TOOLS=$CACHE_ROOT/cargo-tools
OUT=${COLDSITE_DIST_DIR:-$ROOT/target/dist}

log() { printf '[dist %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ ${1:-} == --print-dir ]]; then
    echo "$OUT"
    exit 0
fi

# Run from a cargo test, the build would inherit the test's package variables, which some
# crates read at compile time: the binaries would be rebuilt for nothing.
while read -r var; do unset "$var"; done < <(compgen -e | grep -E '^CARGO_(PKG_|MANIFEST_|CRATE_|BIN_|TARGET_TMPDIR|PRIMARY_)')

cd "$ROOT"
VERSION=$(cargo pkgid -p coldsite-operator | sed 's/.*[@#]//')
[[ $VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || die "could not read the crate version (got '$VERSION')"
CHART_APP_VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/coldsite/Chart.yaml)
[[ $CHART_APP_VERSION == "$VERSION" ]] ||
    die "charts/coldsite/Chart.yaml appVersion is '$CHART_APP_VERSION' but the crates are $VERSION: set appVersion: \"$VERSION\""
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [[ $REVISION != unknown ]] && ! git diff --quiet HEAD 2>/dev/null; then
    REVISION="$REVISION-dirty"
fi
SOURCE=$(cargo metadata --no-deps --format-version 1 |
    python3 -c 'import json,sys; print(next(p["repository"] for p in json.load(sys.stdin)["packages"] if p["name"]=="coldsite-operator"))')
# The commit's time stamps every file and the image, so one commit builds one digest.
EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
RELEASE_URL=${COLDSITE_RELEASE_URL:-${SOURCE%/}/releases/download/v$VERSION}

install_tools() {
    if ! rustup target list --installed | grep -qx "$TARGET"; then
        log "adding the Rust target $TARGET"
        if ! rustup target add "$TARGET" >&2; then
            # Without rustup's server, link glibc statically: as static, with no loader, but
            # name lookups in the image rely on glibc's built-in files and dns services.
            TARGET=x86_64-unknown-linux-gnu
            STATIC_GLIBC=1
            log "WARNING: the musl target is not available here; building static glibc binaries"
        fi
    fi
    local missing=()
    command -v musl-gcc >/dev/null || missing+=(musl-tools)
    command -v buildah >/dev/null || missing+=(buildah)
    command -v skopeo >/dev/null || missing+=(skopeo) # publishes the archive; the tests pull with it
    command -v readelf >/dev/null || missing+=(binutils)
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
    if ((${#missing[@]})); then
        log "installing Debian packages: ${missing[*]}"
        [[ $(id -u) == 0 ]] || die "need root to install ${missing[*]} (or install them and re-run)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    local tool name
    for tool in cargo-deny@$CARGO_DENY_VERSION cargo-cyclonedx@$CARGO_CYCLONEDX_VERSION; do
        name=${tool%@*}
        # Cargo subcommands answer --version when run as `cargo-x x --version`.
        if ! "$TOOLS/bin/$name" "${name#cargo-}" --version 2>/dev/null | grep -q "${tool#*@}"; then
            log "installing $tool into $TOOLS (once)"
            cargo install --quiet --locked --root "$TOOLS" "$tool" >&2
        fi
    done
}

check_licences() {
    log "checking every dependency's licence against deny.toml"
    "$TOOLS/bin/cargo-deny" --log-level error check licenses >&2
}

build_binaries() {
    log "building static release binaries for $TARGET"
    local rustflags=${RUSTFLAGS:-}
    if [[ -n ${STATIC_GLIBC:-} ]]; then rustflags+=" -C target-feature=+crt-static"; fi
    RUSTFLAGS=$rustflags CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$TARGET" \
        -p coldsite-operator --bin coldsite-controller \
        -p coldsite-cli --bin kubectl-coldsite --bin kubectl_complete-coldsite >&2
    local bin
    for bin in coldsite-controller kubectl-coldsite kubectl_complete-coldsite; do
        if readelf -l "$BUILT/$bin" | grep -q 'program interpreter'; then
            die "$bin is not static"
        fi
    done
}

build_image() {
    local context archive storage
    context=$(mktemp -d)
    trap 'rm -rf "$context"' RETURN
    cp "$BUILT/coldsite-controller" "$context/"
    cp /etc/ssl/certs/ca-certificates.crt "$context/"
    archive=$OUT/coldsite-controller-$VERSION.oci.tar
    storage=(--storage-driver vfs --root "$CACHE_ROOT/buildah/storage" --runroot "$CACHE_ROOT/buildah/run")
    log "building the image coldsite-controller:$VERSION (revision $REVISION)"
    buildah "${storage[@]}" build --quiet --isolation chroot --identity-label=false --omit-history \
        --timestamp "$EPOCH" --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
        --build-arg SOURCE="$SOURCE" -f "$HERE/Containerfile" -t "localhost/coldsite-controller:$VERSION" \
        "$context" >/dev/null
    rm -f "$archive"
    buildah "${storage[@]}" push --quiet "localhost/coldsite-controller:$VERSION" \
        "oci-archive:$archive:$VERSION" >&2
    buildah "${storage[@]}" rmi --prune >/dev/null 2>&1 || true
    buildah "${storage[@]}" rmi "localhost/coldsite-controller:$VERSION" >/dev/null 2>&1 || true
}

write_sbom() {
    log "writing the controller's SBOM (CycloneDX)"
    # cargo-cyclonedx writes one beside every package's Cargo.toml of the workspace; keep the
    # controller's, out of the tree, and drop the rest.
    "$TOOLS/bin/cargo-cyclonedx" cyclonedx --quiet --manifest-path controller/operator/Cargo.toml \
        --format json --target "$TARGET" --override-filename coldsite-controller.cdx >&2
    mv controller/operator/coldsite-controller.cdx.json "$OUT/coldsite-controller-$VERSION.cdx.json"
    find controller e2e -maxdepth 2 -name coldsite-controller.cdx.json -delete
}

package_plugin() {
    local tarball=kubectl-coldsite-$VERSION-linux-amd64.tar.gz
    log "packaging the plugin: $tarball"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" --mode=0755 \
        -C "$BUILT" -cf - kubectl-coldsite kubectl_complete-coldsite | gzip -9n >"$OUT/$tarball"
    (cd "$OUT" && sha256sum "$tarball" >"$tarball.sha256")
}

write_krew_manifest() {
    local tarball=kubectl-coldsite-$VERSION-linux-amd64.tar.gz sum
    sum=$(cut -d' ' -f1 "$OUT/$tarball.sha256")
    cat >"$OUT/coldsite.yaml" <<EOF
# krew plugin manifest, written by dist/build.sh for $VERSION.
apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: coldsite
spec:
  version: v$VERSION
  homepage: $SOURCE
  shortDescription: Run and inspect coldsite disaster-recovery plans for KubeVirt VMs
  description: |
    Validates and simulates coldsite recovery plans, starts test, planned and
    unplanned failovers, failbacks and reprotects, approves manual gates, and
    shows status and HTML reports of the runs.
  caveats: |
    kubectl completes "kubectl coldsite ..." by running kubectl_complete-coldsite
    from PATH. krew links only kubectl-coldsite; link the completer too:
      ln -s ~/.krew/store/coldsite/v$VERSION/kubectl_complete-coldsite ~/.krew/bin/
  platforms:
    - selector:
        matchLabels:
          os: linux
          arch: amd64
      uri: $RELEASE_URL/$tarball
      sha256: $sum
      files:
        - from: kubectl-coldsite
          to: .
        - from: kubectl_complete-coldsite
          to: .
      bin: kubectl-coldsite
EOF
}

install_tools
mkdir -p "$OUT"
BUILT=$ROOT/target/$TARGET/release
check_licences
build_binaries
build_image
write_sbom
package_plugin
write_krew_manifest
(cd "$OUT" && sha256sum "coldsite-controller-$VERSION.oci.tar" "coldsite-controller-$VERSION.cdx.json" \
    "kubectl-coldsite-$VERSION-linux-amd64.tar.gz" >SHA256SUMS)
log "done: $OUT"
ls -l "$OUT" >&2
