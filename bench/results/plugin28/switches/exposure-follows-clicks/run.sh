#!/bin/bash
# #28 switches beyond the papers, on exposure-follows-clicks' validation days (protocol amendment 21:45 UTC)
cd /work/main
D=var/family/exposure-follows-clicks
echo "$(date +%T) pool start"
.venv/bin/xdm tune --data $D --param model.unclicked_pool --values mean,attention --model xdm --baseline sdm --out var/switches28/pool
echo "$(date +%T) pool done; negatives start"
.venv/bin/xdm tune --data $D --param model.unclicked_negatives --values false,true --model xdm --baseline sdm --out var/switches28/negatives
echo "$(date +%T) negatives done"
