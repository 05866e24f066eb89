#!/usr/bin/env bash
# Builds the Debian package: target/debian/patchbay_VERSION_amd64.deb with patchbay-switch,
# flowctl and patchbay-vmm, the systemd unit, /etc/patchbay/switch.toml, man pages and shell
# completions generated from the binaries' own CLI definitions, the Grafana dashboard and the
# Prometheus rules. docs/packaging.md describes the package.
#
#   scripts/build-deb.sh            release build (what to install)
#   scripts/build-deb.sh --debug    package the debug build (the tests, to save a release build)
#
# Needs cargo, dpkg-deb, readelf, objdump and gzip (binutils, dpkg: on any Debian).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile=release
cargo_profile=(--release)
if [[ ${1:-} == --debug ]]; then
    profile=debug
    cargo_profile=()
fi
BINS=(patchbay-switch flowctl patchbay-vmm)

${CARGO:-cargo} build "${cargo_profile[@]}" -p patchbay-switch -p flowctl -p patchbay-vmm
target_dir=${CARGO_TARGET_DIR:-target}
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[[ -n $version ]] || { echo "build-deb.sh: no version in Cargo.toml" >&2; exit 1; }

out=target/debian
root=$out/root
rm -rf "$root"
mkdir -p "$root/DEBIAN"

for b in "${BINS[@]}"; do
    install -D -m 0755 "$target_dir/$profile/$b" "$root/usr/bin/$b"
    if [[ $profile == release ]]; then strip --strip-debug "$root/usr/bin/$b"; fi
    mkdir -p "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
        "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"
    "$root/usr/bin/$b" --print-man | gzip -9n >"$root/usr/share/man/man1/$b.1.gz"
    "$root/usr/bin/$b" --print-completions bash >"$root/usr/share/bash-completion/completions/$b"
    "$root/usr/bin/$b" --print-completions zsh >"$root/usr/share/zsh/vendor-completions/_$b"
    "$root/usr/bin/$b" --print-completions fish >"$root/usr/share/fish/vendor_completions.d/$b.fish"
done
install -D -m 0644 packaging/patchbay-switch.service "$root/lib/systemd/system/patchbay-switch.service"
install -D -m 0644 packaging/switch.toml "$root/etc/patchbay/switch.toml"
install -D -m 0644 contrib/grafana/patchbay.json "$root/usr/share/patchbay/grafana/patchbay.json"
install -D -m 0644 contrib/prometheus/patchbay-rules.yml "$root/usr/share/patchbay/prometheus/patchbay-rules.yml"
doc=$root/usr/share/doc/patchbay
install -d "$doc"
for f in README.md docs/*.md; do gzip -9nc "$f" >"$doc/$(basename "$f").gz"; done
printf 'Patchbay\nLicense: Apache-2.0 (see /usr/share/common-licenses/Apache-2.0)\n' >"$doc/copyright"

# Dependencies from the binaries themselves: the newest glibc symbol version they use, and
# libgcc_s for unwinding.
glibc=$(for b in "${BINS[@]}"; do objdump -T "$root/usr/bin/$b"; done |
    grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
depends="libc6 (>= $glibc)"
needed=$(for b in "${BINS[@]}"; do readelf -d "$root/usr/bin/$b"; done)
if grep -q 'libgcc_s.so.1' <<<"$needed"; then
    depends+=", libgcc-s1"
fi
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@DEPENDS@/$depends/" -e "s/@SIZE@/$size/" \
    packaging/debian/control.in >"$root/DEBIAN/control"
install -m 0644 packaging/debian/conffiles "$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "packaging/debian/$s" "$root/DEBIAN/$s"; done

deb=$out/patchbay_${version}_amd64.deb
dpkg-deb --build --root-owner-group "$root" "$deb" >/dev/null
echo "$deb"
