#!/bin/bash
# #28, validation days of exposure-follows-clicks only (the test period held out unread): each base alone, its
# dense layers trained with AdaGrad (every run before learner.dense_optimizer) or Adam at lr 1e-3 (the
# amendment of 2026-12-08 00:45 UTC). One row per `xdm tune` (n_negatives at its default 1000 is the
# "setting" tried, so each call trains exactly one model); tune.md / tune.json of each go to recipe/<row>/.
set -e
cd "$(dirname "$0")/../../../.."
D=var/family/exposure-follows-clicks
row() {  # name, dense optimiser, variant
    .venv/bin/xdm --set learner.dense_optimizer=$2 tune --data $D --param model.n_negatives --values 1000 \
        --model $3 --baseline '' --out var/recipe28/real/$1
    mkdir -p bench/results/plugin28/recipe/$1
    cp var/recipe28/real/$1/tune.md var/recipe28/real/$1/tune.json bench/results/plugin28/recipe/$1/
}
row hstu-adam adam hstu
row sasrec-adam adam sasrec
row sasrec-adagrad adagrad sasrec
row sdm-adam adam sdm
row gru4rec-adam adam gru4rec
row gru4rec-adagrad adagrad gru4rec
# The AdaGrad rows of HSTU and SDM are earlier runs of the same command before the setting existed:
# exposure-follows-clicks/diagnosis/hstu-alone-validation.md (45.84 %) and switches/exposure-follows-clicks (SDM 45.20 %).
