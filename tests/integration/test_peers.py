"""torch-rechub peers (learner/peers.py) on a tiny simulated world; skipped without the bench extra."""

from __future__ import annotations

import pytest

from learner.data import build_offline_data
from learner.offline import TrainSettings
from learner.peers import PEERS, PeerUnavailable, _rechub, train_and_evaluate_peer
from learner.split import Split
from replay.simulate import simulate

try:
    _rechub()
except PeerUnavailable as exc:
    pytest.skip(f"bench extra not installed: {exc}", allow_module_level=True)


@pytest.mark.timeout(240)
def test_every_peer_trains_and_beats_the_popularity_free_random_ranking(tmp_path):
    simulate(300, 800, 6, 3, tmp_path / "world", progress=False)
    data = build_offline_data(Split(tmp_path / "world"), progress=False)
    for name in PEERS:
        result = train_and_evaluate_peer(name, data, tmp_path / name, TrainSettings(epochs=1, batch_size=64),
                                         n_boot=200, seed=0, progress=False)
        assert len(result["users"]) == len(data.test)
        hr50 = result["summary"]["hr@50"]["mean"]
        assert hr50 > 50 / result["n_items_ranked"], (name, hr50)
        assert (tmp_path / name / "eval.json").exists()
