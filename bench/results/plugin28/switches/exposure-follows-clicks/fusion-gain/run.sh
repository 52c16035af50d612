#!/bin/bash
# #28 model.learned_fusion_gain on exposure-follows-clicks' validation days (protocol amendment 21:54 UTC)
cd /work/main
D=var/family/exposure-follows-clicks
for spec in "xdm-hstu 0" "xdm-hstu 0.03" "xdm 0.3"; do
  set -- $spec
  echo "$(date +%T) $1 λ $2 start"
  XDM_MODEL__TRIPLET_WEIGHT=$2 .venv/bin/xdm tune --data $D --param model.learned_fusion_gain --values 0.1 \
      --model $1 --baseline '' --out var/gain28/$1-lambda$2
done
echo "$(date +%T) done"
