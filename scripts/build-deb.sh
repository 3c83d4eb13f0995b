#!/usr/bin/env bash
# Builds the Debian package target/debian/ringlb_<version>-1_<arch>.deb
# with cargo-deb (`cargo install cargo-deb --locked`). First writes what
# the package ships but the repository does not hold, under
# target/deb-assets/: the units with /usr/bin paths
# (scripts/package-units.sh), and the man pages and bash/zsh/fish
# completions, which `ringlb generate` writes from the binary's own
# command-line definition. The binary is the release build, stripped in the
# package (the release profile keeps debug info for perf).
# Prints the package's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null 2>&1 || { echo "cargo-deb not found: cargo install cargo-deb --locked" >&2; exit 2; }

cargo build --release --locked -p lb-bin >&2
assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/units" "$assets/man" "$assets/completions"
scripts/package-units.sh "$assets/units"
target/release/ringlb generate --man "$assets/man" --completions "$assets/completions"
# --strip: the release profile's debug = 1 would otherwise stay in the
# binary (~30 MB); --no-build: built just above.
cargo deb -p lb-bin --no-build --strip --locked --output target/debian/ >&2
deb=$(ls -t target/debian/ringlb_*.deb | head -1)
echo "$deb"
