"""The world family (#28): new simulator settings leave existing worlds byte-identical, the no-signal switch
changes only what the unclicked window can hold, and every named member is the command line it documents."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from replay.simulate import FeedConfig, simulate
from replay.world_family import FAMILY, FAMILY_SEED, family_world
from xdm.cli import cli
from xdm.log_format import read_events

# sha256 of `simulate(300, 800, 4, 3, DIR)`'s files, computed with the simulator as it was before the
# family's settings (commit 797a84f): a default world must not change by a byte.
BEFORE_FAMILY = {
    "events.csv": "114f6d856ea923b0f49d4ce6c15a3b29479d08d4ffd998397b748f9a117b5267",
    "items.csv": "885ca638130d47c0bc4620c8d0e02d8316e150caae1051a488f88bc3b6540f6f",
    "users.csv": "7e9c81e7e1af924d9be14a21653bcf3c1fd98793386caee029d0eb6424369e15",
}


def _digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def test_a_default_world_is_byte_identical_to_one_written_before_the_family_settings(tmp_path: Path) -> None:
    simulate(300, 800, 4, 3, tmp_path / "now", progress=False)
    assert _digests(tmp_path / "now") == BEFORE_FAMILY
    simulate(300, 800, 4, 3, tmp_path / "off", feed=FeedConfig(unclicked_noise=0.0), progress=False)
    assert _digests(tmp_path / "off") == BEFORE_FAMILY


def test_the_no_signal_switch_replaces_only_unclicked_impressions_by_repeated_decoys(tmp_path: Path) -> None:
    plain = simulate(150, 800, 3, 4, tmp_path / "plain", progress=False)
    noisy = simulate(150, 800, 3, 4, tmp_path / "noisy", feed=FeedConfig(unclicked_noise=1.0), progress=False)
    for name in ("items.csv", "users.csv"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "noisy" / name).read_bytes()
    a, b = list(read_events(tmp_path / "plain")), list(read_events(tmp_path / "noisy"))
    assert len(a) == len(b) == plain.events == noisy.events
    # everything but the item of an impression is the same event for event: clicks, times, users, pages
    assert all((x.ts_ms, x.user_id, x.kind, x.request_id, x.position) == (y.ts_ms, y.user_id, y.kind, y.request_id,
                                                                          y.position) for x, y in zip(a, b))
    assert [x.item_id for x in a if x.kind == "click"] == [y.item_id for y in b if y.kind == "click"]
    clicked = {(x.user_id, x.request_id, x.position) for x in a if x.kind == "click"}
    changed = [(x, y) for x, y in zip(a, b) if x.item_id != y.item_id]
    assert changed and all(x.kind == "impression" and (x.user_id, x.request_id, x.position) not in clicked
                           for x, y in changed)  # a clicked impression keeps its item
    unclicked = sum(x.kind == "impression" and (x.user_id, x.request_id, x.position) not in clicked for x in a)
    assert len(changed) > 0.9 * unclicked and noisy.decoy_impressions >= len(changed) and plain.decoy_impressions == 0
    # a decoy stands for its candidate wherever it is shown, so it repeats as the candidate did and still
    # reaches the unclicked window (shown at least twice)
    shown = np.unique([f"{y.user_id}/{y.item_id}" for _, y in changed], return_counts=True)[1]
    assert (shown >= 2).mean() > 0.3


def test_feed_settings_are_typed_checked_and_named_in_one_line(tmp_path: Path) -> None:
    feed = FeedConfig().with_settings(["page_size=6", "unclicked_noise=0.5"])
    assert (feed.page_size, feed.unclicked_noise) == (6, 0.5) and isinstance(feed.page_size, int)
    for bad, message in (("nope=1", "expected FIELD=VALUE"), ("page_size=x", "is not a number"),
                         ("history_share=-1", "must not be negative"), ("unclicked_noise=1.5", "within [0, 1]"),
                         ("history_share=0.9", "must not exceed 1")):
        with pytest.raises(ValueError, match=message.replace("[", r"\[")):
            FeedConfig().with_settings([bad])
        result = CliRunner().invoke(cli, ["simulate", "--users", "20", "--days", "1", "--feed", bad,
                                          "--out", str(tmp_path / "bad")])
        assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    unknown = CliRunner().invoke(cli, ["simulate", "--family", "nope", "--out", str(tmp_path / "bad")])
    assert unknown.exit_code != 0 and "no world 'nope' in the family" in unknown.output


@pytest.mark.timeout(120)
def test_every_family_member_is_the_command_line_it_documents(tmp_path: Path) -> None:
    assert len(FAMILY) >= 10 and all(member.seed == FAMILY_SEED for member in FAMILY.values())
    runner = CliRunner()
    for name, member in FAMILY.items():
        # the member at a tiny size through --family, and through the options its command line spells out
        small = ["--users", "40", "--days", "2"]
        named = runner.invoke(cli, ["simulate", "--family", name, *small, "--out", str(tmp_path / name / "a")])
        assert named.exit_code == 0, named.output
        spelled = member.command(str(tmp_path / name / "b")).split()[2:]  # drop "xdm simulate"
        spelled[spelled.index("--users") + 1], spelled[spelled.index("--days") + 1] = "40", "2"
        written = runner.invoke(cli, ["simulate", *spelled])
        assert written.exit_code == 0, written.output
        assert _digests(tmp_path / name / "a") == _digests(tmp_path / name / "b"), name
        assert family_world(name).differs


def test_family_members_differ_from_the_reference_where_they_say() -> None:
    reference = FAMILY["reference"]
    assert not reference.world and not reference.feed
    assert FAMILY["catalogue-50k"].items == 50_000 and FAMILY["catalogue-50k"].world_config().n_leaf_cats == 2000
    assert FAMILY["no-signal-window"].feed_config().unclicked_noise == 1.0
    assert FAMILY["fast-drift"].world_config().interest_life_days < reference.world_config().interest_life_days
    random_feed = FAMILY["exposure-random"].feed_config()
    assert random_feed.history_share == random_feed.stale_exposure == 0.0
