#!/usr/bin/env bash
# Installs the Debian packages ftune builds against; skips what is already present.
set -euo pipefail
pkgs=(cmake ninja-build g++ pkg-config libopenblas-dev libyaml-cpp-dev nlohmann-json3-dev libcli11-dev
      libfmt-dev libgtest-dev libgmock-dev libsentencepiece-dev sentencepiece python3
      libpcre2-dev libsnappy-dev zlib1g-dev libzstd-dev libcairo2-dev libgloo-dev
      libcpp-httplib-dev curl python3-jinja2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
