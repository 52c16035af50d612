"""ReadPositions: a log that starts over under a reader is reported once per loss, loudly, and only then."""

from __future__ import annotations

import logging

from stream.broker_loss import LOSSES, DataLoss, ReadPositions

TOPIC = "windows-changelog"


def _watch() -> tuple[ReadPositions, list[DataLoss]]:
    positions = ReadPositions("windows", "windows must be rebuilt")
    seen: list[DataLoss] = []
    positions.on_loss(seen.append)
    return positions, seen


def test_reading_on_and_ends_that_keep_up_or_lag_as_tansu_reports_them_are_no_loss():
    positions, seen = _watch()
    for offset in range(5):
        positions.read(TOPIC, 0, offset)
    positions.read(TOPIC, 0, 9)  # a gap (compaction, aborted transactions) is not a loss
    assert positions.judge_ends({(TOPIC, 0): 10}) == ([], {})
    positions.read(TOPIC, 0, 10)
    positions.read(TOPIC, 0, 11)
    # tansu reports the first offset of the last batch + 1: below the position, but not below an earlier report
    assert positions.judge_ends({(TOPIC, 0): 11}) == ([], {})
    assert positions.judge_ends({(TOPIC, 0): 11, (TOPIC, 1): 0}) == ([], {})  # and a partition never read
    assert not seen and not positions.lost and positions.positions == {(TOPIC, 0): 12}


def test_an_offset_read_again_is_a_loss_reported_once(caplog):
    positions, seen = _watch()
    before = LOSSES.labels("windows", TOPIC)._value.get()
    for offset in range(8):
        positions.read(TOPIC, 1, offset)
    with caplog.at_level(logging.ERROR, logger="stream.broker_loss"):
        for offset in range(3):  # the restarted broker's new log, written again from 0
            positions.read(TOPIC, 1, offset)
    assert [(loss.partition, loss.position, loss.now) for loss in seen] == [(1, 8, "gave offset 0 again")]
    assert LOSSES.labels("windows", TOPIC)._value.get() == before + 1
    assert ("broker lost data: topic windows-changelog partition 1 gave offset 0 again, below position 8 "
            "that windows had read; windows must be rebuilt") in caplog.messages


def test_an_end_gone_back_below_the_position_is_a_loss_and_the_next_one_is_reported_again():
    positions, seen = _watch()
    for offset in range(20):
        positions.read(TOPIC, 0, offset)
    positions.judge_ends({(TOPIC, 0): 15})
    assert positions.judge_ends({(TOPIC, 0): 0}) == ([(TOPIC, 0)], {})  # the broker restarted: an empty log
    assert positions.judge_ends({(TOPIC, 0): 0}) == ([], {})  # read again from its beginning: nothing more
    for offset in range(4):
        positions.read(TOPIC, 0, offset)
    positions.judge_ends({(TOPIC, 0): 4})
    assert positions.judge_ends({(TOPIC, 0): 1}) == ([(TOPIC, 0)], {})  # a second restart
    assert [(loss.position, loss.now) for loss in seen] == [(20, "ends at offset 0 (it had reported 15)"),
                                                            (4, "ends at offset 1 (it had reported 4)")]
    assert positions.losses == 2


def test_a_first_end_below_the_position_is_probed_before_it_counts():
    positions, seen = _watch()
    positions.start_at("samples", 0, 500)  # a learner resumed from its checkpoint
    positions.start_at("samples", 1, 300)
    lost, unsure = positions.judge_ends({("samples", 0): 0, ("samples", 1): 290})
    assert lost == [] and unsure == {("samples", 0): 0, ("samples", 1): 290} and not seen
    assert positions.judge_true_ends({("samples", 0): 0, ("samples", 1): 300}) == [("samples", 0)]
    assert [(loss.topic, loss.partition, loss.position) for loss in seen] == [("samples", 0, 500)]


def test_a_partition_gone_from_the_metadata_is_a_loss_once():
    positions, seen = _watch()
    positions.read(TOPIC, 3, 0)
    assert positions.judge_ends({(TOPIC, 3): None}) == ([(TOPIC, 3)], {})
    assert positions.judge_ends({(TOPIC, 3): None}) == ([], {})
    assert [loss.now for loss in seen] == ["is gone"]


def test_checks_are_rate_limited():
    positions, _ = _watch()
    assert positions.due(every_s=60) and not positions.due(every_s=60)
    assert positions.due(every_s=0)
