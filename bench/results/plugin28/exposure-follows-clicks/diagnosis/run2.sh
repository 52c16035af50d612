#!/bin/bash
# validation days only: does a λ between 0.03 and 0.3, or a gate that starts closed, rescue the plug-in on HSTU?
cd /work/main
D=var/family/exposure-follows-clicks
.venv/bin/xdm tune --data $D --param model.triplet_weight --values 0.1 --model xdm-hstu --baseline '' --out var/diag28/xdm-hstu-lambda0.1
.venv/bin/xdm tune --data $D --param model.gate_bias_shift --values -4 --model xdm-hstu --baseline '' --out var/diag28/xdm-hstu-gate-4
echo done
