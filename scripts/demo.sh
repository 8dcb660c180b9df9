#!/usr/bin/env bash
# The quickstart: a tiny random Llama in Hugging Face format, LoRA-trained on the CPU on a small
# dataset, then the adapter inspected. Runs in about a minute on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
FTUNE=${FTUNE:-build/ftune}
"$FTUNE" init-model --preset tiny --vocab-size 512 --random demo-out/tiny-llama \
  --tokenizer examples/quickstart --seed 1 --overwrite
"$FTUNE" train configs/quickstart.yaml --overwrite
"$FTUNE" inspect demo-out/adapter
echo
echo "metrics: demo-out/adapter/metrics.jsonl   adapter: demo-out/adapter/adapter_model.safetensors"
