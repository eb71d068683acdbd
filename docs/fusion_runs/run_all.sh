#!/bin/bash
# Sequential fusion runs on avmnist-t (patch-stem tokens); logs next to this script.
cd /work/main
COMMON="--data-root /work/shared/data --set data.dataset=avmnist-t --set train.limit=4000 --set train.epochs=3 --set train.batch_size=50 --set train.lr=0.002 --set train.num_threads=1 --set fusion.eval_limit=1000 --set train.checkpoint_dir=/work/main/.cache/runs/fusion/ckpt"
run() { name=$1; shift; PYTHONPATH=. .venv/bin/python -m pipeline.cli $COMMON "$@" train fusion --inputs stems --name $name > .cache/runs/fusion/$name.log 2>&1; }
run cross-learned
run notrim --set fusion.trim=false
run local-learned --set fusion.token_score_mode=local
run cross-random --set fusion.head_mask_mode=random
run command --set fusion.task=command
run command-notrim --set fusion.task=command --set fusion.trim=false --set train.lr=0.001  # added after the first command run diverged
PYTHONPATH=. .venv/bin/python -m pipeline.cli $COMMON --set train.limit=12000 --set train.epochs=5 --set train.lr=0.001 --set fusion.task=command --set fusion.trim=false train fusion --inputs stems --name command-notrim-12k
