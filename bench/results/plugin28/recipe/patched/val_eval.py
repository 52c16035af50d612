"""Diagnosis only: score a tune run's checkpoint on the world's validation split (test days unread)."""
import sys
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[5]))  # the repository root
import learner.trainer as T
from learner.data import build_offline_data
from learner.offline import evaluate
from learner.split import DEFAULT_TEST_DAYS, Split
from xdm.config import load_config

orig = T.Trainer.load_state_dict
def load_state_dict(self, state):  # the patched optimiser's state does not fit AdaGrad; evaluation needs none
    state = dict(state)
    self.model.load_state_dict  # noqa
    self.vocab.load_state_dict(state["vocab"])
    self.model.load_state_dict(state["model"])
T.Trainer.load_state_dict = load_state_dict
cfg = load_config()
world = sys.argv[1]
data = build_offline_data(Split(world, cfg.windows, cfg.samples, DEFAULT_TEST_DAYS, cache_dir="var/offline-cache").validation(), False)
for run in sys.argv[2:]:
    r = evaluate(run, data=data, n_boot=200)
    print(run, f"HR@50 {r['summary']['hr@50']['mean']:.2%} MRR@50 {r['summary']['mrr@50']['mean']:.2%} users {len(r['users'])}", flush=True)
