"""replay.skipped: the items a user skipped before a request, grouped by skips, and what an answer does with them."""

from __future__ import annotations

import json

from replay.report import build_report
from replay.skipped import SkipIndex, flat_fields
from xdm.records import Event, Item

HOUR = 3_600_000
CATALOGUE = {f"i{n}": Item(f"i{n}", leaf_cat=f"leaf{n % 3}") for n in range(12)}


def _event(ts: int, item: str, kind: str = "impression", user: str = "u") -> Event:
    return Event(event_id=f"{user}-{ts}-{item}-{kind}", user_id=user, item_id=item, kind=kind, ts_ms=ts)


def _index(events: list[Event], span_ms: int = 10 * HOUR) -> SkipIndex:
    index = SkipIndex(span_ms, CATALOGUE)
    for e in events:
        index.add(e)
    return index


def test_items_are_grouped_by_skips_in_the_span_and_a_click_clears_them() -> None:
    events = [_event(1 * HOUR, "i0"), _event(2 * HOUR, "i0"),  # 2 skips
              *(_event(h * HOUR, "i1") for h in (1, 2, 3)),  # 3 skips
              *(_event(h * HOUR, "i2") for h in (1, 2, 3, 4)),  # 4: in no group
              *(_event(h * HOUR, "i4") for h in (1, 2, 3, 4, 5, 6)),  # 6 skips
              _event(1 * HOUR, "i5"), _event(2 * HOUR, "i5"), _event(3 * HOUR, "i5", "click")]  # clicked
    index = _index(events)
    assert index.skips("u", 7 * HOUR) == {"i0": 2, "i1": 3, "i2": 4, "i4": 6}
    figures = index.figures("u", 7 * HOUR, ["i1", "i3", "i7"])
    assert figures["k2"].items == 1 and figures["k2"].in_top50 == 0.0
    assert figures["k3"].items == 1 and figures["k3"].in_top50 == 1.0
    assert figures["k3"].leaf_share50 == 2 / 3  # i1 and i7 are leaf1
    assert figures["k5p"].items == 1


def test_only_the_span_before_the_request_counts() -> None:
    events = [_event(1 * HOUR, "i0"), _event(2 * HOUR, "i0"), _event(20 * HOUR, "i0"), _event(21 * HOUR, "i0")]
    index = _index(events)
    assert index.skips("u", 21 * HOUR) == {"i0": 1}  # 1 h and 2 h are out of the 10 h span, 21 h is not before
    assert flat_fields(index.figures("u", 21 * HOUR, ["i0"]))["skip_k2_in50"] is None


def test_report_gives_each_arm_its_responsiveness(tmp_path) -> None:
    rows = []
    for n in range(40):
        for arm, share in (("sdm", 0.5), ("xdm", 0.1)):
            row = {"user_id": f"u{n}", "ts_ms": n * HOUR, "arm": arm, "version": 1, "fallback": False,
                   **{m: 0.5 for m in ("hr50", "mrr50", "r50", "f150", "hr80", "mrr80", "r80", "f180")},
                   "skip_k2_items": 2, "skip_k2_in50": share, "skip_k2_leaf50": 0.2,
                   "skip_k3_items": 0, "skip_k3_in50": None, "skip_k3_leaf50": None,
                   "skip_k5p_items": 0, "skip_k5p_in50": None, "skip_k5p_leaf50": None}
            rows.append(row)
    (tmp_path / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = build_report(tmp_path)
    assert report["responsiveness"]["sdm"]["skip_k2_in50"]["mean"] == 0.5
    assert report["responsiveness"]["xdm"]["skip_k2_in50"]["mean"] == 0.1
    assert "skip_k3_in50" not in report["responsiveness"]["xdm"]
    assert "skipped items in top-50" in (tmp_path / "summary.md").read_text()
