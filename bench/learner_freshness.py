"""Freshness along the pipeline and learner throughput on the embedded stack with simulated traffic.

Starts broker, Milvus Lite, one stream worker, one learner (default publish interval) and replays a
simulated log at a paced rate. It reads the learner's own Prometheus histograms:
event -> sample (broker time of the event completing a sample, to its emission by the worker),
sample -> trained, trained -> published (oldest unpublished step to its version being searchable), and
compares the samples/s the learner trained with the samples/s the worker emitted.

A click reaches served item vectors after: its labels arrive (the user's next 5 clicks: behaviour, not
system latency), then event -> sample + sample -> trained + trained -> published. The last three are the
system's share and are what the 60 s target is about. Writes bench/results/learner_freshness/learner_freshness.json.

    .venv/bin/python bench/learner_freshness.py [--events 150000] [--rate 2000] [--set learner.rehearsal_steps=0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.processes import free_port, wait_until  # noqa: E402
from infra.stack import start_services  # noqa: E402
from replay.producer import make_producer, produce_catalogue, produce_events  # noqa: E402
from replay.simulate import simulate  # noqa: E402
from xdm.config import apply_overrides, load_config, parse_set_options  # noqa: E402
from xdm.errors import ConfigError  # noqa: E402
from xdm.log_format import read_events  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "learner_freshness" / "learner_freshness.json"
HISTOGRAMS = ("xdm_event_to_sample_seconds", "xdm_sample_to_trained_seconds", "xdm_trained_to_published_seconds")


def main() -> None:
    args = _args()
    root = Path(tempfile.mkdtemp(prefix="xdm-bench-fresh-"))
    log_dir = root / "log"
    simulate(args.users, args.items, args.days, 1, log_dir, progress=False)
    metrics_port = free_port()
    stack = start_services(root / "stack", args.cfg, "local")
    stack.cfg = apply_overrides(stack.cfg, {"learner.metrics_port": metrics_port})
    try:
        stack.start_worker()
        stack.start_learner("xdm", "xdm")
        producer = make_producer(stack.cfg.kafka)
        produce_catalogue(producer, stack.cfg.kafka, log_dir)
        started = time.monotonic()
        sent = _paced(producer, stack.cfg.kafka, log_dir, args.events, args.rate)
        produce_s = time.monotonic() - started
        producer.close()
        time.sleep(args.settle)  # let the last samples train and one more version publish
        metrics = _scrape(metrics_port)
        elapsed = time.monotonic() - started
    finally:
        stack.stop()
    result = _summarise(metrics, sent, produce_s, elapsed, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _print(result)
    print(f"wrote {args.out}")


def _paced(producer, kafka, log_dir: Path, limit: int, rate: float) -> int:
    """Send at `rate` events/s (wall clock), the traffic a live feed would bring."""
    events = read_events(log_dir)
    sent = 0
    began = time.monotonic()
    chunk = max(1, int(rate // 20))
    while sent < limit:
        batch = []
        for event in events:
            batch.append(event)
            if len(batch) == chunk:
                break
        if not batch:
            break
        sent += produce_events(producer, kafka, batch, progress=False)
        ahead = sent / rate - (time.monotonic() - began)
        if ahead > 0:
            time.sleep(ahead)
    return sent


def _scrape(port: int) -> dict[str, dict]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, dict] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, value = line.rsplit(" ", 1)
        name = name_labels.split("{")[0]
        labels = name_labels[len(name):]
        out.setdefault(name, {})[labels] = float(value)
    return out


def _quantile(metrics: dict, hist: str, q: float) -> float | None:
    """Quantile from cumulative buckets (upper bound of the bucket holding it)."""
    buckets = metrics.get(f"{hist}_bucket", {})
    pairs = sorted((float("inf") if 'le="+Inf"' in k else float(k.split('le="')[1].split('"')[0]), v)
                   for k, v in buckets.items())
    if not pairs or pairs[-1][1] == 0:
        return None
    target = q * pairs[-1][1]
    return next(le for le, count in pairs if count >= target)


def _summarise(metrics: dict, sent: int, produce_s: float, elapsed: float, args) -> dict:
    samples = sum(metrics.get("xdm_learner_samples_total", {}).values())
    lags = {h: {"p50_s": _quantile(metrics, h, 0.5), "p99_s": _quantile(metrics, h, 0.99),
                "count": sum(v for k, v in metrics.get(f"{h}_count", {}).items())} for h in HISTOGRAMS}
    p99s = [lags[h]["p99_s"] for h in HISTOGRAMS]
    return {
        "events_sent": sent, "event_rate_target": args.rate, "event_rate_sent": round(sent / produce_s, 1),
        "samples_trained": samples, "samples_per_s_trained": round(samples / elapsed, 1),
        "samples_per_s_emitted": round(lags[HISTOGRAMS[0]]["count"] / elapsed, 1),
        "lags": lags, "system_share_p99_s": None if None in p99s else round(sum(p99s), 2),
        "published_version": max(metrics.get("xdm_learner_published_version", {"": 0}).values()),
        "world": {"users": args.users, "items": args.items, "days": args.days},
    }


def _print(r: dict) -> None:
    print(f"\nsent {r['events_sent']:,} events at {r['event_rate_sent']:,.0f}/s; "
          f"samples emitted {r['samples_per_s_emitted']}/s, trained {r['samples_per_s_trained']}/s "
          f"(total {r['samples_trained']:,.0f}); published version {r['published_version']:.0f}")
    print(f"{'stage':<36} {'p50 (s, bucket)':>16} {'p99 (s, bucket)':>16} {'count':>8}")
    for name, lag in r["lags"].items():
        print(f"{name:<36} {lag['p50_s']!s:>16} {lag['p99_s']!s:>16} {lag['count']:>8.0f}")
    print(f"system share of click -> served vectors, p99 sum: {r['system_share_p99_s']} s")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=150_000, help="events to replay")
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second sent")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--settle", type=float, default=40.0, help="seconds to wait after the last event")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="config override, repeatable (e.g. learner.rehearsal_steps=0)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file")
    args = parser.parse_args()
    try:
        # unknown keys and bad values fail here, before any work
        args.cfg = load_config("local", env={}, overrides=parse_set_options(args.overrides))
    except ConfigError as exc:
        parser.error(str(exc))
    return args


if __name__ == "__main__":
    main()
