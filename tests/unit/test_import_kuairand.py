"""`xdm import kuairand`: a tiny data folder written in KuaiRand's own format, converted and read back."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from importers.kuairand import import_kuairand
from xdm.log_format import LogFormatError, read_events, read_items, read_users
from xdm.cli import cli

LOG_HEADER = ("user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow", "is_comment",
              "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms", "profile_stay_time",
              "comment_stay_time", "is_profile_enter", "is_rand", "tab")
T0 = 1_649_376_000_000  # 2022-04-08 00:00 UTC


def _log_row(user: int, video: int, minute: int, click: int, rand: int = 0) -> tuple:
    return (user, video, 20220408, 1000 + minute, T0 + minute * 60_000, click, 0, 0, 0, 0, 0, click, 9000 * click,
            17200, 0, 0, 0, rand, 1)


# grouped by user, not in time order, as KuaiRand's logs are
STANDARD = [_log_row(1, 101, 5, 1), _log_row(1, 102, 1, 0), _log_row(2, 101, 3, 0), _log_row(2, 103, 2, 1)]
RANDOM = [_log_row(1, 104, 4, 0, rand=1), _log_row(3, 103, 6, 1, rand=1)]
VIDEO_HEADER = ("video_id", "author_id", "video_type", "upload_dt", "upload_type", "visible_status", "video_duration",
                "server_width", "server_height", "music_id", "music_type", "tag")
VIDEOS = [(101, 441, "NORMAL", "2020-07-08", "ShortImport", 1, 17200.0, 720, 1280, 989206467, 4, "12,65"),
          (102, 442, "AD", "2021-01-02", "LongImport", 1, 30000.0, 720, 1280, 0, 0, "7"),
          (103, 441, "NORMAL", "2022-03-01", "Web", 1, 8000.0, 720, 1280, 989206467, 4, ""),
          (104, 443, "NORMAL", "2022-03-02", "ShortImport", 1, 9000.0, 720, 1280, 55, 9, "3,12")]
USER_HEADER = ("user_id", "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
               "follow_user_num", "follow_user_num_range", "fans_user_num", "fans_user_num_range", "friend_user_num",
               "friend_user_num_range", "register_days", "register_days_range",
               *(f"onehot_feat{i}" for i in range(18)))
USERS = [(user, degree, 0, 0, 1, 5, "(0,10]", 312, "[100,1k)", 0, "0", 3624, "730+", *range(user, user + 18))
         for user, degree in ((1, "full_active"), (2, "high_active"), (3, "UNKNOWN"))]


def _write_csv(path: Path, header: tuple, rows: list[tuple]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def kuairand(tmp_path: Path) -> Path:
    """KuaiRand-Pure as unpacked: the files in its data/ folder."""
    data = tmp_path / "KuaiRand-Pure" / "data"
    data.mkdir(parents=True)
    _write_csv(data / "log_standard_4_08_to_4_21_pure.csv", LOG_HEADER, STANDARD)
    _write_csv(data / "log_random_4_22_to_5_08_pure.csv", LOG_HEADER, RANDOM)
    _write_csv(data / "video_features_basic_pure.csv", VIDEO_HEADER, VIDEOS)
    _write_csv(data / "user_features_pure.csv", USER_HEADER, USERS)
    return tmp_path / "KuaiRand-Pure"


def test_exposures_become_impressions_and_clicks_sorted_by_time(kuairand: Path, tmp_path: Path) -> None:
    result = import_kuairand(kuairand, tmp_path / "log", progress=False)

    events = list(read_events(tmp_path / "log"))  # the reader itself refuses rows out of time order
    assert (result.impressions, result.clicks, result.users) == (6, 3, 3)
    assert [(e.ts_ms - T0, e.user_id, e.item_id, e.kind) for e in events] == [
        (60_000, "1", "102", "impression"),
        (120_000, "2", "103", "impression"), (120_001, "2", "103", "click"),
        (180_000, "2", "101", "impression"),
        (240_000, "1", "104", "impression"),
        (300_000, "1", "101", "impression"), (300_001, "1", "101", "click"),
        (360_000, "3", "103", "impression"), (360_001, "3", "103", "click")]
    assert [e.event_id for e in events[:3]] == ["s0408:3", "s0408:5", "s0408:5:click"]
    assert events[4].event_id == "r0422:2"
    assert {(e.request_id, e.position) for e in events} == {("", -1)}  # KuaiRand has neither


@pytest.mark.parametrize(("logs", "impressions", "clicks"), [("standard", 4, 2), ("random", 2, 1)])
def test_one_kind_of_log_alone(kuairand: Path, tmp_path: Path, logs: str, impressions: int, clicks: int) -> None:
    result = import_kuairand(kuairand, tmp_path / "log", logs=logs, progress=False)

    assert (result.impressions, result.clicks) == (impressions, clicks)
    assert sum(1 for _ in read_events(tmp_path / "log")) == impressions + clicks


def test_videos_and_users_carry_their_side_information(kuairand: Path, tmp_path: Path) -> None:
    result = import_kuairand(kuairand / "data", tmp_path / "log", progress=False)  # the data folder itself works too

    items = read_items(tmp_path / "log")
    assert result.items == len(items) == 4
    first = items["101"]
    assert (first.leaf_cat, first.top_cat, first.brand, first.shop) == ("12", "ShortImport", "441", "989206467")
    assert items["103"].leaf_cat == ""  # no tag: unknown
    profiles = read_users(tmp_path / "log")
    assert result.profiles == len(profiles) == 3
    fields = profiles["1"].as_dict()
    assert fields["user_active_degree"] == "full_active"
    assert fields["follow_user_num_range"] == "(0,10]" and "follow_user_num" not in fields  # the count's range only
    assert "register_days" not in fields and fields["register_days_range"] == "730+"
    assert fields["onehot_feat17"] == "18" and fields["is_video_author"] == "1"


def test_a_user_sample_keeps_only_their_events_items_and_profiles(kuairand: Path, tmp_path: Path) -> None:
    import_kuairand(kuairand, tmp_path / "a", max_users=2, progress=False)
    import_kuairand(kuairand, tmp_path / "b", max_users=2, progress=False, buffer_events=2)

    assert (tmp_path / "a" / "events.csv").read_bytes() == (tmp_path / "b" / "events.csv").read_bytes()
    events = list(read_events(tmp_path / "a"))
    users = {e.user_id for e in events}
    assert len(users) == 2
    assert set(read_users(tmp_path / "a")) == users
    assert set(read_items(tmp_path / "a")) == {e.item_id for e in events}


@pytest.mark.parametrize(("cell", "value", "reason"), [
    (4, "abc", "log_standard_4_08_to_4_21_pure.csv:3: time_ms 'abc' is not a whole number"),
    (4, "1650485801301000", "log_standard_4_08_to_4_21_pure.csv:3: time_ms 1650485801301000 is after year 2200"),
    (5, "2", "log_standard_4_08_to_4_21_pure.csv:3: is_click 2 is not 0 or 1"),
    (0, "", "log_standard_4_08_to_4_21_pure.csv:3: empty user_id or video_id"),
])
def test_a_bad_row_fails_naming_its_file_and_line(kuairand: Path, tmp_path: Path, cell: int, value: str,
                                                  reason: str) -> None:
    rows = [list(row) for row in STANDARD]
    rows[1][cell] = value
    _write_csv(kuairand / "data" / "log_standard_4_08_to_4_21_pure.csv", LOG_HEADER, [tuple(row) for row in rows])

    with pytest.raises(LogFormatError) as caught:
        import_kuairand(kuairand, tmp_path / "log", progress=False)
    assert str(caught.value).startswith(reason)


def test_missing_columns_files_and_mixed_versions_are_named(kuairand: Path, tmp_path: Path) -> None:
    data = kuairand / "data"
    _write_csv(data / "log_random_4_22_to_5_08_pure.csv", LOG_HEADER[:5], [row[:5] for row in RANDOM])
    with pytest.raises(LogFormatError, match=r"^log_random_4_22_to_5_08_pure\.csv:1: missing column\(s\) is_click"):
        import_kuairand(kuairand, tmp_path / "a", progress=False)

    (data / "log_random_4_22_to_5_08_pure.csv").unlink()
    with pytest.raises(LogFormatError, match=r"has no log_random_\*\.csv"):
        import_kuairand(kuairand, tmp_path / "b", progress=False)
    assert import_kuairand(kuairand, tmp_path / "c", logs="standard", progress=False).events == 6

    _write_csv(data / "log_standard_4_22_to_5_08_1k.csv", LOG_HEADER, STANDARD)
    with pytest.raises(LogFormatError, match=r"several KuaiRand versions \(1k, pure\)"):
        import_kuairand(kuairand, tmp_path / "d", logs="standard", progress=False)


def test_the_command_converts_and_xdm_stats_reads_the_result(kuairand: Path, tmp_path: Path) -> None:
    out = tmp_path / "log"
    converted = CliRunner().invoke(cli, ["import", "kuairand", str(kuairand), "--out", str(out)])
    assert converted.exit_code == 0, converted.output
    assert "wrote 9 events (6 impressions, 3 clicks) of 3 users, 4 items, 3 profiles" in converted.output

    stats = CliRunner().invoke(cli, ["stats", str(out)])
    assert stats.exit_code == 0, stats.output
    assert re.search(r"^impressions / clicks\s+6 / 3\s", stats.output, re.MULTILINE)


def test_the_command_reports_a_bad_row_in_one_line(kuairand: Path, tmp_path: Path) -> None:
    _write_csv(kuairand / "data" / "log_random_4_22_to_5_08_pure.csv", LOG_HEADER,
               [RANDOM[0], (*RANDOM[1][:4], "12:00", *RANDOM[1][5:])])

    result = CliRunner().invoke(cli, ["import", "kuairand", str(kuairand), "--out", str(tmp_path / "log")])
    assert result.exit_code == 2
    assert result.output == "error: log_random_4_22_to_5_08_pure.csv:3: time_ms '12:00' is not a whole number\n"
