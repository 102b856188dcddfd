#!/usr/bin/env bash
# The 8 MiniLM NER LoRA adapters benchmarks/serve.py serves: the shipped CoNLL-2003 recipe, cut
# short (60 steps on the first 1,000 sentences, a different seed per run), ~1 min each.
#   PEFTKIT_DATA_DIR=../shared/data bash benchmarks/serve_adapters.sh OUT_DIR
set -euo pipefail
out=${1:?usage: serve_adapters.sh OUT_DIR}
for i in 1 2 3 4 5 6 7 8; do
  [ -f "$out/ner$i/result.json" ] && continue
  python -m peftkit -q run conll2003/lora "output.dir=$out/ner$i" train.seed=$i \
    data.max_train_samples=1000 train.max_steps=60 train.min_steps=null train.learning_rate=0.002 \
    train.eval_every=no data.max_eval_samples=50 data.max_test_samples=200 eval.fail_on_collapse=false
done
