#!/usr/bin/env bash
# The encoder-token fusion exit runs of docs/fusion.md (each writes checkpoints/fusion_transformer_avmnist-t
# under its own train.checkpoint_dir; the encoders are linked in from checkpoints/).
set -euo pipefail
cd "$(dirname "$0")/../.."
run() {
  dir=.cache/runs/fusion_exit/$1; shift
  mkdir -p "$dir"
  for d in vision_avmnist audio_avmnist text_avmnist-t; do ln -sfn "$PWD/checkpoints/$d" "$dir/$d"; done
  PYTHONPATH=. .venv/bin/python -m pipeline.cli --data-root ../shared/data --set data.dataset=avmnist-t \
    --set train.batch_size=50 --set train.lr=0.001 --set fusion.eval_limit=3000 --set train.num_threads=1 \
    --set train.checkpoint_dir="$PWD/$dir" "$@" train fusion --inputs encoders > "$dir.log" 2>&1
}
run trim8k --set train.limit=8000 --set train.epochs=4 &              # the committed engine exit
run notrim8k --set train.limit=8000 --set train.epochs=4 --set fusion.trim=false &
wait
run trim24k --set train.limit=24000 --set train.epochs=2 &
run notrim24k --set train.limit=24000 --set train.epochs=2 --set fusion.trim=false &
wait
# then, with the chosen exit copied to checkpoints/:
#   exitflow --data-root ../shared/data --set fusion.exit=transformer profile --dataset avmnist-t
#   exitflow --data-root ../shared/data profile --dataset avmnist-t
#   exitflow --data-root ../shared/data --set fusion.exit=transformer bench --dataset avmnist-t --limit 1000 --budget-fraction 0.5
#   PYTHONPATH=. .venv/bin/python benchmarks/fusion_exit_compare.py --dataset avmnist-t --limit 1000 --thresholds 0.05,0.1,0.15,0.2,0.25,0.3
#   PYTHONPATH=. .venv/bin/python benchmarks/fusion_exit_latency.py --dataset avmnist-t --samples 300
