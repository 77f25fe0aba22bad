#!/usr/bin/env bash
# rustfmt and clippy for `make check`: part of the machine's rustup toolchain; added if missing.
set -euo pipefail
for c in rustfmt clippy; do
  bin=$([ "$c" = rustfmt ] && echo "cargo-fmt" || echo "cargo-clippy")
  if ! command -v "$bin" >/dev/null 2>&1 && ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "check: $c is missing: rustup component add $c"
    rustup component add "$c"
  fi
done
