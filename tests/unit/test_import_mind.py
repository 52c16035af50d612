"""`xdm import mind`: tiny folders written in MIND's own format, converted, read back with the log format's reader."""

from __future__ import annotations

import calendar
import json
import re
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from importers.mind import HISTORY_LEAD_MS, import_mind
from xdm.cli import cli
from xdm.log_format import LogFormatError, read_events, read_items, read_users


def _utc_ms(text: str) -> int:
    return calendar.timegm(datetime.strptime(text, "%m/%d/%Y %I:%M:%S %p").timetuple()) * 1000


def _entities(*pairs: tuple[str, float]) -> str:
    return json.dumps([{"Label": f"label {qid}", "Type": "O", "WikidataId": qid, "Confidence": confidence,
                        "OccurrenceOffsets": [0], "SurfaceForms": [qid]} for qid, confidence in pairs])


NEWS = [  # news id, category, subcategory, title, abstract, url, title entities, abstract entities
    ("N1", "sports", "football_nfl", "Patriots win", "A game.", "https://assets.msn.com/labs/mind/AA1.html",
     _entities(("Q193390", 0.7), ("Q1142", 0.99)), "[]"),
    ("N2", "news", "newsus", "A storm", "", "https://assets.msn.com/labs/mind/AA2.html", "[]", "[]"),
    ("N3", "finance", "finance-companies", "Shares up", "Abstract.", "https://assets.msn.com/labs/mind/AA3.html",
     _entities(("Q95", 0.9)), _entities(("Q95", 0.9))),
    ("N4", "lifestyle", "lifestyleroyals", "Royal visit", "", "https://assets.msn.com/labs/mind/AA4.html", "", ""),
    ("N5", "sports", "football_nfl", "Draft", "", "https://assets.msn.com/labs/mind/AA5.html", "[]", "[]"),
]
TRAIN = [  # impression id, user id, time, history, impressions: rows out of time order, as MIND's are
    ("1", "U1", "11/11/2019 9:05:58 AM", "N1 N2", "N3-1 N4-0 N5-0"),
    ("2", "U2", "11/11/2019 8:00:00 AM", "", "N4-0 N3-1"),
    ("3", "U1", "11/10/2019 10:00:00 PM", "N1 N2", "N5-1 N3-0 N1-1"),
]
DEV = [("1", "U3", "11/15/2019 6:00:00 AM", "N2", "N1-1 N2-0"),
       ("2", "U1", "11/15/2019 7:00:00 AM", "N1 N2", "N4-1")]


def _write_folder(root: Path, behaviors: list[tuple[str, ...]], news: list[tuple[str, ...]] = NEWS) -> Path:
    root.mkdir(parents=True)
    (root / "behaviors.tsv").write_text("".join("\t".join(row) + "\n" for row in behaviors), encoding="utf-8")
    (root / "news.tsv").write_text("".join("\t".join(row) + "\n" for row in news), encoding="utf-8")
    return root


@pytest.fixture
def train(tmp_path: Path) -> Path:
    return _write_folder(tmp_path / "MINDsmall_train", TRAIN)


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    return _write_folder(tmp_path / "MINDsmall_dev", DEV)


def test_requests_become_impressions_then_clicks_sorted_by_time(train: Path, tmp_path: Path) -> None:
    result = import_mind([train], tmp_path / "log", history="skip", progress=False)

    events = list(read_events(tmp_path / "log"))  # the reader itself refuses rows out of time order
    assert [e.ts_ms for e in events] == sorted(e.ts_ms for e in events)
    assert (result.impressions, result.clicks, result.users) == (8, 4, 2)
    first = [e for e in events if e.request_id == "MINDsmall_train:3"]  # the earliest row, though listed last
    assert events[: len(first)] == first
    t = _utc_ms("11/10/2019 10:00:00 PM")
    assert [(e.ts_ms - t, e.kind, e.item_id, e.position) for e in first] == [
        (0, "impression", "N5", 0), (0, "impression", "N3", 1), (0, "impression", "N1", 2),
        (1, "click", "N5", 0), (1, "click", "N1", 2)]
    assert {e.event_id for e in first} == {"MINDsmall_train:3:0", "MINDsmall_train:3:1", "MINDsmall_train:3:2",
                                           "MINDsmall_train:3:0:click", "MINDsmall_train:3:2:click"}
    assert read_users(tmp_path / "log") == {}


def test_history_becomes_clicks_an_hour_before_the_users_first_request(train: Path, tmp_path: Path) -> None:
    import_mind([train], tmp_path / "log", progress=False)

    history = [e for e in read_events(tmp_path / "log") if e.event_id.startswith("history:")]
    first_request = _utc_ms("11/10/2019 10:00:00 PM") - HISTORY_LEAD_MS
    # once per user (U1's later row repeats it), in MIND's order, the last click an hour before the first row
    assert [(e.user_id, e.item_id, e.ts_ms, e.kind) for e in history] == [
        ("U1", "N1", first_request - 1, "click"), ("U1", "N2", first_request, "click")]


def test_items_carry_category_subcategory_and_the_headline_subject(train: Path, tmp_path: Path) -> None:
    result = import_mind([train], tmp_path / "log", progress=False)

    items = read_items(tmp_path / "log")
    assert result.items == len(items) == 5
    assert (items["N1"].leaf_cat, items["N1"].top_cat, items["N1"].brand, items["N1"].shop) == (
        "football_nfl", "sports", "Q1142", "")  # the more confident of the two title entities
    assert items["N3"].brand == "Q95"
    assert items["N2"].brand == items["N4"].brand == ""  # no title entities: unknown


def test_train_and_dev_merge_by_time_and_keep_their_request_ids_apart(train: Path, dev: Path, tmp_path: Path) -> None:
    import_mind([dev, train], tmp_path / "log", progress=False)  # folder order does not matter

    events = list(read_events(tmp_path / "log"))
    requests = list(dict.fromkeys(e.request_id for e in events if e.request_id))
    assert requests == ["MINDsmall_train:3", "MINDsmall_train:2", "MINDsmall_train:1", "MINDsmall_dev:1",
                        "MINDsmall_dev:2"]
    # U1's history is imported once, before their earliest row (in train), not again before the dev row
    assert sum(e.event_id.startswith("history:U1:") for e in events) == 2
    assert [e.item_id for e in events if e.event_id.startswith("history:U3:")] == ["N2"]
    assert len(read_items(tmp_path / "log")) == 5  # news listed in both folders once


def test_a_user_sample_is_the_same_on_every_run_and_keeps_their_items(train: Path, dev: Path, tmp_path: Path) -> None:
    first = import_mind([train, dev], tmp_path / "a", max_users=2, progress=False)
    again = import_mind([train, dev], tmp_path / "b", max_users=2, progress=False)

    assert (tmp_path / "a" / "events.csv").read_bytes() == (tmp_path / "b" / "events.csv").read_bytes()
    users = {e.user_id for e in read_events(tmp_path / "a")}
    assert first.users == again.users == len(users) == 2
    shown = {e.item_id for e in read_events(tmp_path / "a")}
    assert set(read_items(tmp_path / "a")) == shown


def test_a_small_sort_buffer_spills_and_gives_the_same_log(train: Path, dev: Path, tmp_path: Path) -> None:
    import_mind([train, dev], tmp_path / "memory", progress=False)
    import_mind([train, dev], tmp_path / "spilled", progress=False, buffer_events=3)

    assert (tmp_path / "memory" / "events.csv").read_bytes() == (tmp_path / "spilled" / "events.csv").read_bytes()
    assert sorted(p.name for p in (tmp_path / "spilled").iterdir()) == ["events.csv", "items.csv"]  # no scratch left


@pytest.mark.parametrize(("row", "reason"), [
    (("4", "U9", "2019-11-11 09:05:58", "", "N1-1"), "behaviors.tsv:2: time '2019-11-11 09:05:58' is not like"),
    (("4", "U9", "11/11/2019 9:05:58 AM", "", "N1 N2"), "behaviors.tsv:2: impression 'N1' has no click label"),
    (("4", "U9", "11/11/2019 9:05:58 AM", "", "N1-2"), "behaviors.tsv:2: impression 'N1-2': the click label"),
    (("4", "U9", "11/11/2019 9:05:58 AM", ""), "behaviors.tsv:2: expected 5 tab-separated columns"),
    (("4", "", "11/11/2019 9:05:58 AM", "", "N1-0"), "behaviors.tsv:2: empty user id"),
])
def test_a_bad_row_fails_naming_its_file_and_line(tmp_path: Path, row: tuple[str, ...], reason: str) -> None:
    folder = _write_folder(tmp_path / "bad", [TRAIN[0], row])

    with pytest.raises(LogFormatError) as caught:
        import_mind([folder], tmp_path / "log", progress=False)
    assert str(caught.value).startswith(reason)
    assert not (tmp_path / "log" / "events.csv").exists()


def test_bad_news_entities_fail_with_the_line(tmp_path: Path) -> None:
    news = [NEWS[0], ("N2", "news", "newsus", "T", "", "u", "[{not json", "[]")]
    folder = _write_folder(tmp_path / "bad", TRAIN[:1], news)

    with pytest.raises(LogFormatError, match=r"^news\.tsv:2: title entities are not JSON"):
        import_mind([folder], tmp_path / "log", progress=False)


def test_the_command_converts_and_xdm_stats_reads_the_result(train: Path, dev: Path, tmp_path: Path) -> None:
    out = tmp_path / "log"
    converted = CliRunner().invoke(cli, ["import", "mind", str(train), str(dev), "--out", str(out), "--gzip"])
    assert converted.exit_code == 0, converted.output
    assert "wrote 20 events (11 impressions, 9 clicks) of 3 users, 5 items" in converted.output

    stats = CliRunner().invoke(cli, ["stats", str(out)])
    assert stats.exit_code == 0, stats.output
    assert re.search(r"^users\s+3\s", stats.output, re.MULTILINE)
    assert re.search(r"^impressions / clicks\s+11 / 9\s", stats.output, re.MULTILINE)

    again = CliRunner().invoke(cli, ["import", "mind", str(train), "--out", str(out)])
    assert again.exit_code == 2
    assert "already holds a log" in again.output


def test_the_command_reports_a_bad_row_in_one_line(tmp_path: Path) -> None:
    test_split = _write_folder(tmp_path / "MINDlarge_test", [("1", "U1", "11/16/2019 9:05:58 AM", "N1", "N2 N3")])

    result = CliRunner().invoke(cli, ["import", "mind", str(test_split), "--out", str(tmp_path / "log")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert result.output.startswith("error: behaviors.tsv:1: impression 'N2' has no click label")
    assert "import the train and dev folders" in result.output
