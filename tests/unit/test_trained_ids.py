"""The trained-ids record follows the checkpoints: a restart forgets what the restored model never saw."""

from __future__ import annotations

from learner.trained_ids import TrainedIds, read_trained_ids


def test_a_restart_cuts_the_record_back_to_the_checkpoint_it_resumes_from(tmp_path):
    path = tmp_path / "xdm" / "trained-ids.txt"
    record = TrainedIds(path)
    record.append(["a", "b"])
    at_checkpoint = record.mark()
    record.append(["c"])
    record._handle.write(b"d-cut-sho")  # a kill in the middle of an append
    record._handle.flush()
    record.close()

    assert read_trained_ids(path) == ["a", "b", "c", "d-cut-sho"]
    resumed = TrainedIds(path)
    resumed.cut_to(at_checkpoint)
    resumed.append(["c", "d"])  # trained on again after the restart: once in the record
    resumed.close()
    assert read_trained_ids(path) == ["a", "b", "c", "d"]


def test_a_start_without_a_checkpoint_empties_the_record(tmp_path):
    path = tmp_path / "trained-ids.txt"
    path.write_text("old\n")
    record = TrainedIds(path)
    record.cut_to(0)
    record.append(["new"])
    assert read_trained_ids(path) == ["new"]
    assert read_trained_ids(tmp_path / "missing.txt") == []
