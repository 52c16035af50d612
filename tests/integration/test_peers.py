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


@pytest.mark.timeout(120)
def test_hstu_peer_scores_are_hstu_models_own_logits_at_the_newest_click(tmp_path):
    """The peer reads HSTUModel's layers up to its output at one position; its scores must be the logits
    HSTUModel.forward gives there (forward itself scores every position and is too big at 50 k items)."""
    import torch

    from learner.peers import Peer, PeerInputs

    simulate(60, 200, 4, 5, tmp_path / "world", progress=False)
    data = build_offline_data(Split(tmp_path / "world"), progress=False)
    peer = Peer("hstu", PeerInputs(data.train)).eval()
    samples = [data.train[i] for i in range(16)]
    x = peer.inputs.history(samples, left_pad=False, fixed=False)
    with torch.no_grad():
        ours = peer.scores(samples)[:, 2:]
        full = peer.model(x)
        newest = x.ne(0).sum(1) - 1
        theirs = full[torch.arange(len(samples)), newest][:, 2:]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.timeout(120)
def test_a_peer_trained_at_another_rate_records_it_and_leaves_the_fixed_recipe_alone(tmp_path):
    import json

    from learner.peers import PEER_LR, recipe

    simulate(60, 200, 4, 5, tmp_path / "world", progress=False)
    data = build_offline_data(Split(tmp_path / "world"), progress=False)
    train_and_evaluate_peer("narm", data, tmp_path / "narm", TrainSettings(epochs=1, batch_size=64),
                            n_boot=100, seed=0, progress=False, lr=0.05)
    run = json.loads((tmp_path / "narm" / "run.json").read_text())
    assert run["optimizer"].startswith("Adam lr 0.05,")
    assert recipe("narm")["optimizer"].startswith(f"Adam lr {PEER_LR['narm']},")
