"""The unclicked-window signal (learner/window_signal.py): the heuristic's two readings, and that it finds
the default behaviour's signal and none where the simulator's window is noise."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from learner.data import build_offline_data
from learner.split import Split
from learner.window_signal import BLIND, READING, leaf_weights, population_leaf_rate, window_signal
from replay.simulate import FeedConfig, simulate
from stream.windows import Behavior
from xdm.cli import cli
from xdm.records import Item


def _b(ts: int, leaf: str) -> Behavior:
    return Behavior(ts, Item(f"i{leaf}{ts}", leaf_cat=leaf))


def test_reading_divides_a_leaf_by_its_skips_after_the_last_click_and_blind_by_their_expectation() -> None:
    history = (_b(1, "a"), _b(2, "a"), _b(5, "b"), _b(9, "c"))  # last clicks: a at 2, b at 5, c at 9
    unclicked = (_b(1, "a"), _b(3, "a"), _b(4, "a"), _b(6, "a"), _b(7, "b"), _b(8, "x"))
    read = leaf_weights(history, unclicked)
    # a: 3 skips after its last click (the one at 1 came before it); b: 1; c: none since 9
    assert read == pytest.approx({"a": 0.5 / 4, "b": 0.25 / 2, "c": 0.25})
    rate = population_leaf_rate([unclicked, (_b(1, "b"), _b(2, "x"))])
    assert rate == pytest.approx({"a": 0.5, "b": 0.25, "x": 0.25})
    blind = leaf_weights(history, unclicked, rate)
    # blind: as many skips as the window holds since each last click (a: 5, b: 3, c: 0), at the population's rates
    assert blind == pytest.approx({"a": 0.5 / (1 + 5 * 0.5), "b": 0.25 / (1 + 3 * 0.25), "c": 0.25})
    assert leaf_weights((), unclicked) == {} and leaf_weights(history, ()) == pytest.approx(
        {"a": 0.5, "b": 0.25, "c": 0.25})


# Small enough to simulate and split in seconds; many short visits give enough validation users.
SIGNAL_WORLD = {"users": 1000, "items": 2000, "days": 8, "seed": 2}
SHORT_VISITS = ("pages_per_session=6", "active_day_prob=0.6")


@pytest.mark.timeout(120)
def test_the_default_behaviour_carries_signal_and_the_no_signal_switch_takes_it_away(tmp_path: Path) -> None:
    lifts = {}
    for noise in (0.0, 1.0):
        out = tmp_path / f"noise{noise:g}"
        simulate(**SIGNAL_WORLD, out_dir=out, progress=False,
                 feed=FeedConfig().with_settings([*SHORT_VISITS, f"unclicked_noise={noise}"]))
        report = window_signal(build_offline_data(Split(out, test_days=2.0).validation(), progress=False), 1000)
        assert report["data"]["holdout_days"] == 2.0  # validation days: the test period is never read
        assert set(report["summary"]) == {BLIND, READING} and report["mean_unclicked"] > 20
        lifts[noise] = report["lift"]
    for key in ("hr@50", "mrr@50"):
        assert lifts[0.0][key]["low"] > 0, lifts  # the stale-interest mechanism: skips mark lost interests
        assert lifts[1.0][key]["low"] < 0 < lifts[1.0][key]["high"], lifts  # decoys: nothing to read
        assert abs(lifts[1.0][key]["lift"]) < 0.03 and lifts[1.0][key]["lift"] < lifts[0.0][key]["lift"]


@pytest.mark.timeout(120)
def test_cli_stats_measures_the_signal_on_validation_days(tiny_log: Path) -> None:
    # the session's small world: this checks what the command prints, not the size of the signal
    result = CliRunner().invoke(cli, ["stats", str(tiny_log), "--window-signal", "--test-days", "1", "--cache", ""])
    assert result.exit_code == 0, result.output
    assert "avg unclicked len" in result.output  # Table 1's statistics first
    assert "unclicked-window signal" in result.output and "validation users (the test period held out unread)" \
        in result.output
    assert "hr@50" in result.output and "mrr@50" in result.output
