#!/bin/bash
# Diagnosis, validation days only: does our HSTU base's recipe explain its gap to torch-rechub's HSTU
# (exposure-follows-clicks validation HR@50 45.8 vs 54.7 %)? Near-full softmax (4,000 of ~5,000 items as
# negatives) and a lower AdaGrad rate, one change at a time.
cd /work/main
D=var/family/exposure-follows-clicks
echo "$(date +%T) negatives 4000 start"
.venv/bin/xdm tune --data $D --param model.n_negatives --values 4000 --model hstu --baseline '' --out var/recipe28/hstu-neg4000
echo "$(date +%T) lr 0.03 start"
XDM_LEARNER__LR=0.03 .venv/bin/xdm tune --data $D --param model.n_negatives --values 1000 --model hstu --baseline '' --out var/recipe28/hstu-lr0.03
echo "$(date +%T) done"
