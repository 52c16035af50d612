"""The `xdm` command: thin subcommands that load the config, set up logging and call one function.

Errors a user can fix (bad arguments, bad files, unreachable services) end as one readable line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sys
import time
from pathlib import Path

import click

from learner.split import DEFAULT_TEST_ANCHOR, DEFAULT_TEST_DAYS, TEST_ANCHORS, Split
from xdm.config import ENV_PREFIX, Config, as_dict, load_config, parse_set_options
from xdm.errors import XdmError
from xdm.log import setup_logging
from xdm.model_config import model_overrides

USER_ERRORS = (XdmError, ValueError, FileNotFoundError, ConnectionError, OSError)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def friendly(fn):
    """Turn expected failures into one line; let KeyboardInterrupt end quietly."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            sys.exit(130)
        except USER_ERRORS as exc:
            _fail(str(exc) or exc.__class__.__name__)
        except Exception as exc:
            import grpc

            if isinstance(exc, grpc.RpcError):
                _fail(f"{exc.code().name}: {exc.details()}")
            raise

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--profile", default="local", show_default=True, help="Config profile: local, test or cluster.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.FIELD=VALUE", help="Override one config value.")
@click.option("--log-level", default="INFO", show_default=True, help="Logging level.")
@click.pass_context
@friendly
def cli(ctx: click.Context, profile: str, sets: tuple[str, ...], log_level: str) -> None:
    """xdm-recall: streaming online-learning recall with XDM (SRU2B).

    Config precedence: defaults < --profile < env XDM_<SECTION>__<FIELD> < --set.
    """
    setup_logging(log_level)
    overrides = parse_set_options(sets)
    ctx.obj = load_config(profile, env=dict(os.environ), overrides=overrides)
    ctx.meta["profile"] = profile
    ctx.meta["set_keys"] = frozenset(overrides)  # what the user named, not left to a profile or default


def _named_by_user(ctx: click.Context, key: str) -> bool:
    """Whether `section.field` was set with --set or its XDM_SECTION__FIELD variable."""
    section, _, name = key.partition(".")
    return key in ctx.meta.get("set_keys", ()) or f"{ENV_PREFIX}{section.upper()}__{name.upper()}" in os.environ


def _cfg(ctx: click.Context) -> Config:
    return ctx.obj


# ---- config and code generation


@cli.group()
def config() -> None:
    """Inspect the resolved configuration."""


@config.command("show")
@click.pass_context
def config_show(ctx: click.Context) -> None:
    """Print the resolved config as JSON."""
    click.echo(json.dumps(as_dict(_cfg(ctx)), indent=2))


@cli.command()
@friendly
def codegen() -> None:
    """Regenerate xdm/v1/*_pb2*.py from proto/xdm/v1/*.proto."""
    from xdm.codegen import REPO_ROOT, generate

    for path in generate():
        click.echo(str(path.relative_to(REPO_ROOT)))


# ---- logs: simulate, stats, produce


@cli.command()
@click.option("--users", type=click.IntRange(min=1), default=None, help="Number of users [default: 48000, or the family's].")
@click.option("--items", type=click.IntRange(min=10), default=None, help="Catalogue size [default: 5000, or the family's].")
@click.option("--days", type=click.IntRange(min=1), default=None, help="Days of traffic [default: 10, or the family's].")
@click.option("--seed", type=int, default=None, help="Random seed [default: 1, or the family's].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output log directory.")
@click.option("--gzip", "compress", is_flag=True, help="Write .csv.gz files.")
@click.option("--family", "family_name", default=None, metavar="NAME",
              help="Start from a member of the world family (replay/world_family.py, docs/worlds.md).")
@click.option("--world", "world_sets", multiple=True, metavar="FIELD=VALUE",
              help="Change one world setting (replay/world.py WorldConfig), e.g. dislike_brands=2.")
@click.option("--feed", "feed_sets", multiple=True, metavar="FIELD=VALUE",
              help="Change one feed setting (replay/simulate.py FeedConfig), e.g. unclicked_noise=1.")
@friendly
def simulate(users: int | None, items: int | None, days: int | None, seed: int | None, out: Path, compress: bool,
             family_name: str | None, world_sets: tuple[str, ...], feed_sets: tuple[str, ...]) -> None:
    """Simulate a recommender feed and write it in the plain log format."""
    from replay.simulate import FeedConfig
    from replay.simulate import simulate as run
    from replay.world import WorldConfig
    from replay.world_family import family_world

    member = family_world(family_name) if family_name is not None else None
    users = users or (member.users if member else 48000)
    items = items or (member.items if member else 5000)
    days = days or (member.days if member else 10)
    seed = seed if seed is not None else (member.seed if member else 1)
    world = member.world_config(users, items) if member else WorldConfig.scaled(users, items)
    feed = member.feed_config() if member else FeedConfig()
    summary = run(users, items, days, seed, out, world_config=world.with_settings(world_sets),
                  feed=feed.with_settings(feed_sets), compress=compress)
    click.echo(f"wrote {summary.events:,} events ({summary.clicks:,} clicks, {summary.impressions:,} impressions) "
               f"for {users:,} users and {items:,} items to {out} in {summary.seconds:.1f} s")


@cli.command()
@click.argument("log_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--window-signal", is_flag=True,
              help="Also measure whether the unclicked window carries signal, on the validation days "
                   "(learner/window_signal.py; the test days are never read).")
@click.option("--test-days", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TEST_DAYS,
              show_default=True, help="With --window-signal: the test period held out; the days before it score.")
@click.option("--cache", "cache_dir", default="var/offline-cache", show_default=True,
              help="With --window-signal: folder that keeps built splits for reuse ('' = no cache).")
@click.pass_context
@friendly
def stats(ctx: click.Context, log_dir: Path, window_signal: bool, test_days: float, cache_dir: str) -> None:
    """Table-1 statistics of a log (computed from its files with the stream's window rules)."""
    from replay.stats import format_stats, log_stats

    cfg = _cfg(ctx)
    click.echo(format_stats(log_stats(log_dir, cfg.windows, cfg.samples)))
    if window_signal:
        from learner.data import build_offline_data
        from learner.window_signal import format_window_signal
        from learner.window_signal import window_signal as measure

        split = Split(log_dir, cfg.windows, cfg.samples, test_days, cache_dir=cache_dir).validation()
        click.echo("\n" + format_window_signal(measure(build_offline_data(split, progress=False))))


@cli.command()
@click.argument("log_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--speed", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Multiple of real time; 0 = as fast as the broker accepts.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after this many events.")
@click.pass_context
@friendly
def produce(ctx: click.Context, log_dir: Path, speed: float, limit: int | None) -> None:
    """Replay a log (catalogue, profiles, then events in time order) into the broker."""
    from infra.topics import ensure_topics
    from replay.producer import produce_log

    cfg = _cfg(ctx)
    ensure_topics(cfg)
    report = produce_log(cfg.kafka, log_dir, speed=speed, limit=limit)
    click.echo(f"produced {report.items:,} items, {report.users:,} profiles, {report.events:,} events "
               f"in {report.seconds:.1f} s ({report.events_per_s:,.0f} events/s)")


@cli.group("import")
def import_group() -> None:
    """Convert a public dataset's own files into the plain log format (docs/log-format.md)."""


_IMPORT_OUT = click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
                           help="New log directory (must not hold a log yet).")
_IMPORT_MAX_USERS = click.option("--max-users", type=click.IntRange(min=1), default=None,
                                 help="Keep a deterministic sample of this many users.")
_IMPORT_GZIP = click.option("--gzip", "compress", is_flag=True, help="Write .csv.gz files.")


def _echo_import(summary, out: Path) -> None:
    click.echo(f"wrote {summary.events:,} events ({summary.impressions:,} impressions, {summary.clicks:,} clicks) "
               f"of {summary.users:,} users, {summary.items:,} items, {summary.profiles:,} profiles to {out} "
               f"in {summary.seconds:.1f} s")


@import_group.command("mind")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@_IMPORT_OUT
@click.option("--history", type=click.Choice(["clicks", "skip"]), default="clicks", show_default=True,
              help="clicks: each user's history as clicks ending 1 h before their first request; skip: drop it.")
@_IMPORT_MAX_USERS
@_IMPORT_GZIP
@friendly
def import_mind_cmd(sources: tuple[Path, ...], out: Path, history: str, max_users: int | None,
                    compress: bool) -> None:
    """MIND folders (train, dev: behaviors.tsv + news.tsv), merged by time."""
    from importers.mind import import_mind

    _echo_import(import_mind(sources, out, history=history, max_users=max_users, compress=compress), out)


@import_group.command("kuairand")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_IMPORT_OUT
@click.option("--logs", type=click.Choice(["both", "standard", "random"]), default="both", show_default=True,
              help="Which exposure logs: the standard feed, the random insertions, or both merged by time.")
@_IMPORT_MAX_USERS
@_IMPORT_GZIP
@friendly
def import_kuairand_cmd(source: Path, out: Path, logs: str, max_users: int | None, compress: bool) -> None:
    """KuaiRand's data folder (Pure, 1K or 27K): exposure logs, video and user features."""
    from importers.kuairand import import_kuairand

    _echo_import(import_kuairand(source, out, logs=logs, max_users=max_users, compress=compress), out)


# ---- services, each on its own


@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), default=9092, show_default=True, help="Listen port.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("var/broker"),
              show_default=True, help="Folder for the broker's log file.")
@friendly
def broker(port: int, data_dir: Path) -> None:
    """Run the embedded tansu broker (memory storage) until Ctrl-C."""
    from infra.services import start_broker

    _run_until_interrupted(start_broker(data_dir, port))


@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), default=19530, show_default=True, help="Listen port.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("var/milvus"),
              show_default=True, help="Milvus Lite data folder.")
@friendly
def milvus(port: int, data_dir: Path) -> None:
    """Run a Milvus Lite server process until Ctrl-C."""
    from infra.services import start_milvus

    proc = start_milvus(data_dir, data_dir, port)
    click.echo(f"clients of this server: XDM_MILVUS__URI={proc.address} XDM_MILVUS__KEEPALIVE_S=0 "
               "(Milvus Lite refuses pymilvus's keepalive pings)")
    _run_until_interrupted(proc)


@cli.command()
@click.pass_context
@friendly
def topics(ctx: click.Context) -> None:
    """Create every topic with its partition count (idempotent)."""
    from infra.topics import ensure_topics

    for name, parts in ensure_topics(_cfg(ctx)).items():
        click.echo(f"{name}\t{parts} partitions")


@cli.command()
@click.pass_context
@friendly
def worker(ctx: click.Context) -> None:
    """Run one stream worker (Faust): windows in RocksDB, training samples out."""
    from stream.agents import run_worker

    sys.argv = [sys.argv[0], "worker"]  # Faust's worker parses argv; keep our options away from it
    run_worker(_cfg(ctx))


@cli.command()
@click.option("--arm", default=None, help="A/B arm name (default: learner.arm).")
@click.option("--variant", default=None, help="Model variant (default: learner.variant).")
@click.option("--warm-start", type=click.Path(exists=True, file_okay=False), default=None,
              help="Offline run directory to start from.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps.")
@click.option("--idle-exit-s", type=click.FloatRange(min=0), default=None,
              help="Stop when no sample arrived for this many seconds.")
@click.option("--world-size", type=click.IntRange(min=1), default=1, envvar="WORLD_SIZE", show_default=True,
              help="Data-parallel processes training this arm (torch.distributed).")
@click.option("--rank", type=click.IntRange(min=0), default=0, envvar="RANK", show_default=True,
              help="This process's rank in the data-parallel group.")
@click.option("--master-addr", default="127.0.0.1", envvar="MASTER_ADDR", show_default=True,
              help="Host of rank 0 (rendezvous).")
@click.option("--master-port", type=click.IntRange(1, 65535), default=29500, envvar="MASTER_PORT",
              show_default=True, help="Rendezvous port on rank 0.")
@click.option("--dist-backend", type=click.Choice(["auto", "gloo", "nccl"]), default="auto", show_default=True,
              help="Collective backend; auto = nccl on CUDA, else gloo.")
@click.pass_context
@friendly
def learn(ctx: click.Context, arm: str | None, variant: str | None, warm_start: str | None,
          max_steps: int | None, idle_exit_s: float | None, world_size: int, rank: int, master_addr: str,
          master_port: int, dist_backend: str) -> None:
    """Train one arm incrementally on the samples topic and publish versions."""
    from learner.model import VARIANTS
    from learner.online import run_learner

    if variant is not None and variant not in VARIANTS:
        raise click.BadParameter(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if world_size > 1:
        from learner.distributed import DistributedSettings, run_distributed_learner

        settings = DistributedSettings(world_size, rank, master_addr, master_port, dist_backend)
        status = run_distributed_learner(_cfg(ctx), settings, arm, variant, warm_start, max_steps, idle_exit_s)
    else:
        status = run_learner(_cfg(ctx), arm, variant, warm_start, max_steps, idle_exit_s)
    click.echo(f"stopped after {status.steps} steps, {status.samples} samples, versions {status.versions}, "
               f"{status.dead_letters} dead letters", err=True)


@cli.command()
@click.pass_context
@friendly
def serve(ctx: click.Context) -> None:
    """Run the gRPC Recall server until SIGTERM / Ctrl-C."""
    from serving.server import serve as run

    asyncio.run(run(_cfg(ctx)))


@cli.command("recall")
@click.argument("user_id")
@click.option("-k", type=click.IntRange(min=1), default=10, show_default=True, help="Number of items.")
@click.option("--arm", default="", help="Explicit arm (default: sticky assignment).")
@click.option("--address", default="", help="host:port, or each shard's target as in serving.shard_targets "
              "(default: serving.shard_targets, else serving.host:serving.port).")
@click.option("--exclude-clicked", is_flag=True, help="Drop items the user already clicked.")
@click.pass_context
@friendly
def recall_cmd(ctx: click.Context, user_id: str, k: int, arm: str, address: str, exclude_clicked: bool) -> None:
    """Ask the Recall server for USER_ID's top-k items (TLS with serving.tls_ca, token with serving.auth_token_file)."""
    from serving.client import recall

    cfg = _cfg(ctx)
    answer = recall(cfg, address, user_id, k, arm, exclude_clicked=exclude_clicked)
    _print_answer(user_id, answer)


@cli.command()
@click.option("--data", "log_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Replay this log instead of simulating one.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("var/stack"),
              show_default=True, help="Working folder (wiped at start).")
@click.option("--arms", default="xdm:100", show_default=True, help="Arms served, e.g. xdm:50,sdm:50.")
@click.option("--workers", type=click.IntRange(1, 8), default=1, show_default=True, help="Stream workers.")
@click.option("--exit-after-recall", is_flag=True, help="Stop everything after the first Recall answer.")
@click.option("--milvus", type=click.Choice(["lite", "standalone"]), default="lite", show_default=True,
              help="Milvus Lite, or a real Milvus standalone (pip install milvus==2.3.5; HNSW with "
                   "--set milvus.index_type=HNSW).")
@click.pass_context
@friendly
def up(ctx: click.Context, log_dir: Path | None, root: Path, arms: str, workers: int, exit_after_recall: bool,
       milvus: str) -> None:
    """Start the whole stack on this machine with simulated traffic and answer a Recall."""
    from replay.bring_up import bring_up, up_log

    signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM stops the stack like Ctrl-C does
    result = bring_up(_cfg(ctx), ctx.meta["profile"], root.resolve(), log_dir, arms, workers, quiet_libraries=True,
                      milvus=milvus)
    try:
        cfg = result.stack.cfg
        click.echo("\nservices:")
        for proc in result.stack.processes:
            click.echo(f"  {proc.name:<14} pid {proc.pid:<8} {proc.address or '-'}  log {proc.log_path}")
        click.echo(f"  {'xdm up':<14} pid {os.getpid():<8} -  log {up_log(result.stack)}")
        click.echo(f"\nreplayed {result.produced.events:,} events ({result.produced.events_per_s:,.0f} events/s)")
        _print_answer(result.user_id, result.answer)
        if exit_after_recall:
            return
        click.echo(f"\nrunning; try: xdm recall {result.user_id} --address 127.0.0.1:{cfg.serving.port}"
                   "   (Ctrl-C stops everything)")
        _wait_forever()
    finally:
        result.stack.stop()
        click.echo("stopped every process", err=True)


# ---- replay and A/B


_MAX_LAG_OPTION = click.option(
    "--max-learner-lag", type=click.IntRange(min=0), default=2000, show_default=True,
    help="Samples a learner may be behind the workers when answers are asked and scored; the run waits for "
         "slower learners (a huge value: never wait).")
_LEARNER_SET_OPTION = click.option(
    "--learner-set", "learner_sets", multiple=True, metavar="ARM:learner.FIELD=VALUE",
    help="A learner setting for one arm only (repeatable), e.g. xdm:learner.rehearsal_steps=4.")


@cli.command()
@click.argument("log_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--arms", default="xdm:50,sdm:50", show_default=True, help="Arms and their shares (sticky by user).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Report folder (scores.jsonl, report.json, summary.md, plots).")
@click.option("--slice-min", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Event-time minutes between two synchronisations with the workers.")
@click.option("--eval-fraction", type=click.FloatRange(0, 1, min_open=True), default=0.2, show_default=True,
              help="Share of impression requests that query Recall and are scored.")
@click.option("--seed", type=int, default=0, show_default=True, help="Request sampling seed.")
@click.option("--workers", type=click.IntRange(1, 8), default=1, show_default=True, help="Stream workers.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after this many events.")
@click.option("--warm-days", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="The log's first days train the system without scoring, so the arms are compared as trained "
                   "models (the closed loop warms up the first 10 days of its world).")
@click.option("--paired", is_flag=True,
              help="Every sampled request asks every arm (the same users in each arm: a paired comparison).")
@click.option("--resume", is_flag=True, help="Continue a stopped replay in the same --out folder.")
@_MAX_LAG_OPTION
@_LEARNER_SET_OPTION
@click.pass_context
@friendly
def replay(ctx: click.Context, log_dir: Path, arms: str, out_dir: Path, slice_min: float, eval_fraction: float,
           seed: int, workers: int, limit: int | None, warm_days: float, paired: bool, resume: bool,
           max_learner_lag: int,
           learner_sets: tuple[str, ...]) -> None:
    """Replay a log through the live system as an A/B experiment and write its report."""
    from replay.replayer import ReplayOptions
    from replay.run import replay_embedded

    signal.signal(signal.SIGTERM, _interrupt)
    opts = ReplayOptions(slice_ms=int(slice_min * 60_000), eval_fraction=eval_fraction, seed=seed, resume=resume,
                         max_learner_lag=max_learner_lag, warm_days=warm_days, paired=paired)
    run = replay_embedded(_cfg(ctx), ctx.meta["profile"], log_dir, out_dir.resolve(), arms, opts, workers,
                          limit_events=limit, learner_sets=learner_sets, quiet_libraries=True)
    click.echo((run.out_dir / "summary.md").read_text())
    click.echo(f"report: {run.out_dir / 'summary.md'} ({run.progress.scored:,} scored requests, "
               f"{run.progress.events_sent:,} events)")


@cli.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--baseline", default=None, help="Arm the others are compared with (default: sdm).")
@click.option("--warm-days", type=click.FloatRange(min=0), default=None,
              help="Leave out requests of the log's first days (default: the replay's own --warm-days).")
@friendly
def report(out_dir: Path, baseline: str | None, warm_days: float | None) -> None:
    """Rebuild the report of a replay folder from its scores."""
    from replay.report import build_report

    build_report(out_dir, baseline, warm_days=warm_days)
    click.echo((out_dir / "summary.md").read_text())


@cli.command("closed-loop")
@click.option("--arms", default="xdm:50,sdm:50", show_default=True, help="Arms and their shares (sticky by user).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Report folder (closed_loop.md, closed_loop.json, ctr.png).")
# The defaults are the 14-day world of 6,000 users (`xdm simulate --users 6000 --days 14`, seed 1), kept
# so the README's closed-loop results reproduce (the offline default world's 48,000 users would make its
# 53 min several hours): its first 10 days warm the arms up, its last 4 are replaced by the A/B days.
@click.option("--users", type=click.IntRange(min=10), default=6000, show_default=True, help="Simulated users.")
@click.option("--items", type=click.IntRange(min=50), default=5000, show_default=True, help="Catalogue size.")
@click.option("--warm-days", type=click.IntRange(min=1), default=10, show_default=True,
              help="Days of the simulator's own feed replayed first, so every arm starts trained.")
@click.option("--ab-days", type=click.IntRange(min=1), default=4, show_default=True,
              help="Days in which each arm's recall decides what its users see.")
@click.option("--seed", type=int, default=1, show_default=True, help="World and audience seed.")
@click.option("--learner-wait", type=click.FloatRange(min=0), default=3600, show_default=True,
              help="Longest wait (s) for the learners to finish the warm-up samples before the A/B days.")
@_MAX_LAG_OPTION
@_LEARNER_SET_OPTION
@click.pass_context
@friendly
def closed_loop(ctx: click.Context, arms: str, out_dir: Path, users: int, items: int, warm_days: int, ab_days: int,
                seed: int, learner_wait: float, max_learner_lag: int, learner_sets: tuple[str, ...]) -> None:
    """Closed-loop A/B: simulated users click on what each arm recalls; report CTR per arm."""
    from replay.closed_loop import ClosedLoopOptions
    from replay.run import closed_loop_embedded

    signal.signal(signal.SIGTERM, _interrupt)
    opts = ClosedLoopOptions(users=users, items=items, warm_days=warm_days, ab_days=ab_days, seed=seed,
                             learner_wait_s=learner_wait, max_learner_lag=max_learner_lag)
    closed_loop_embedded(_cfg(ctx), ctx.meta["profile"], out_dir.resolve(), arms, opts, learner_sets=learner_sets,
                         quiet_libraries=True)
    click.echo((out_dir / "closed_loop.md").read_text())


# ---- offline: train, evaluate, compare, ablate (learner/offline.py, learner/ablation.py)

_DATA_OPTION = click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                            required=True, help="Log directory in the plain format.")
_TEST_DAYS_OPTION = click.option("--test-days", type=click.FloatRange(min=0, min_open=True),
                                 default=DEFAULT_TEST_DAYS, show_default=True,
                                 help="Last days of the log used as the test period.")
_TEST_ANCHOR_OPTION = click.option(
    "--test-anchor", type=click.Choice(TEST_ANCHORS), default=DEFAULT_TEST_ANCHOR, show_default=True,
    help="Where each test user's windows are taken: at their first click after the cut, as training "
         "samples are, or at the cut (the protocol before; learner/data.py). With ablate/tune --resume, rows "
         "trained on the same training split are scored again, not retrained.")
_BOOT_OPTION = click.option("--boot", type=click.IntRange(min=100), default=2000, show_default=True,
                            help="Bootstrap resamples.")
_JOBS_OPTION = click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
                            help="Models trained side by side, one process and learner.torch_threads threads each.")
_RESUME_OPTION = click.option("--resume", is_flag=True,
                              help="Read back rows of --out that finished with the same inputs instead of "
                                   "training them again (a stopped run goes on; anything changed is retrained).")
_CACHE_OPTION = click.option("--cache", "cache_dir", default="var/offline-cache", show_default=True,
                             help="Folder that keeps built splits for reuse ('' = no cache).")
_EPOCHS_OPTION = click.option("--epochs", type=click.IntRange(min=1), default=None,
                              help="Passes over the training samples (default 3).")
_BATCH_OPTION = click.option("--batch-size", type=click.IntRange(min=1), default=None,
                             help="Samples per step (default: learner.batch_size).")


def _many_rows_options(fn):
    """Options and wrappers shared by the commands that train and score several rows (ablate, tune)."""
    for decorate in reversed((_EPOCHS_OPTION, _BATCH_OPTION, _TEST_DAYS_OPTION, _TEST_ANCHOR_OPTION, _CACHE_OPTION,
                              _BOOT_OPTION, _JOBS_OPTION, _RESUME_OPTION, click.pass_context, friendly)):
        fn = decorate(fn)
    return fn


def _train_settings(cfg: Config, epochs: int | None, batch_size: int | None, default_epochs: int):
    from learner.offline import train_settings

    return train_settings(cfg.learner, epochs, batch_size, default_epochs)


def _split(cfg: Config, data_dir: Path, test_days: float, test_anchor: str, cache_dir: str) -> Split:
    """The offline split the options name, with the config's window and sample rules."""
    return Split(data_dir, cfg.windows, cfg.samples, test_days, test_anchor=test_anchor, cache_dir=cache_dir)


def _check_variant(name: str) -> str:
    from learner.model import VARIANTS

    if name not in VARIANTS:
        raise click.BadParameter(f"unknown model {name!r}; choose one of {', '.join(VARIANTS)}")
    return name


@cli.command()
@_DATA_OPTION
@click.option("--model", "variant", default="xdm", show_default=True, help="xdm, sdm or another variant.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run directory.")
@click.option("--triplet-weight", type=click.FloatRange(min=0), default=None,
              help="λ of the metric loss (model.triplet_weight); given, nothing is chosen on validation days.")
@click.option("--no-choose", is_flag=True,
              help="Keep the config's model.triplet_weight instead of choosing it on validation days.")
@_EPOCHS_OPTION
@_BATCH_OPTION
@_TEST_DAYS_OPTION
@_TEST_ANCHOR_OPTION
@_CACHE_OPTION
@_JOBS_OPTION
@click.pass_context
@friendly
def train(ctx: click.Context, data_dir: Path, variant: str, out: Path, triplet_weight: float | None, no_choose: bool,
          epochs: int | None, batch_size: int | None, test_days: float, test_anchor: str, cache_dir: str,
          jobs: int) -> None:
    """Train a model offline on the log's samples before its test period; writes a run directory.

    λ (model.triplet_weight) is chosen first on validation days, the days just before the test period
    (learner/recipe.py), unless --triplet-weight, --set model.triplet_weight or --no-choose says otherwise."""
    from learner.recipe import format_choice, train_with_recipe

    cfg = _cfg(ctx)
    if triplet_weight is None and _named_by_user(ctx, "model.triplet_weight"):
        triplet_weight = cfg.model.triplet_weight
    run, choice = train_with_recipe(_split(cfg, data_dir, test_days, test_anchor, cache_dir), _check_variant(variant),
                                    out, _train_settings(cfg, epochs, batch_size, 3), model_overrides(cfg.model),
                                    given=triplet_weight, choose=not no_choose, workers=jobs)
    info = json.loads((run / "run.json").read_text())
    click.echo(format_choice(choice))
    click.echo(f"trained {variant} on {info['data']['train_samples']:,} samples x {info['train_settings']['epochs']} "
               f"epoch(s) in {info['timings']['train_s']:.0f} s (dense layers: {info['dense_optimizer']}); final loss "
               f"{info['loss_curve']['epochs'][-1]['loss']:.4f}; run in {run} (warm-start with "
               f"`xdm learn --warm-start {run}`)")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Log directory (default: the one the run was trained on).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the evaluation (with per-user values) here (default: RUN_DIR/eval.json).")
@_BOOT_OPTION
@_CACHE_OPTION
@friendly
def evaluate(run_dir: Path, data_dir: Path | None, json_out: Path | None, boot: int, cache_dir: str) -> None:
    """Full-sort HR/MRR/R/F1 at 50 and 80 on the test users, with 95% bootstrap intervals."""
    from learner.offline import evaluate as run_evaluation
    from learner.offline import metric_keys

    result = run_evaluation(run_dir, data_dir, n_boot=boot, cache_dir=cache_dir)
    target = json_out or run_dir / "eval.json"
    target.write_text(json.dumps(result))
    click.echo(f"{result['variant']} on {len(result['users']):,} test users, {result['n_items_ranked']:,} items ranked")
    for key in metric_keys():
        s = result["summary"][key]
        click.echo(f"  {key:<10} {s['mean']:.4f}  [{s['low']:.4f}, {s['high']:.4f}]")
    click.echo(f"random recall hr@50 {result['random_recall']['hr@50']:.4f}; written to {target}")


@cli.command("compare")
@click.argument("run_a", type=click.Path(exists=True, path_type=Path))
@click.argument("run_b", type=click.Path(exists=True, path_type=Path))
@_BOOT_OPTION
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the comparison here.")
@click.option("--more", nargs=2, multiple=True, type=click.Path(exists=True, path_type=Path),
              metavar="RUN_A RUN_B",
              help="Another run of each side on the same split (another training seed); each side's "
                   "per-user values are averaged over its runs. Repeatable.")
@friendly
def compare_cmd(run_a: Path, run_b: Path, boot: int, json_out: Path | None,
                more: tuple[tuple[Path, Path], ...]) -> None:
    """Relative lift of B over A (paired bootstrap); each is a run directory with eval.json or an eval JSON."""
    from learner.offline import average_evaluations, compare, format_comparison, load_evaluation

    side_a = average_evaluations([load_evaluation(p) for p in (run_a, *(a for a, _ in more))])
    side_b = average_evaluations([load_evaluation(p) for p in (run_b, *(b for _, b in more))])
    result = compare(side_a, side_b, n_boot=boot)
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))
    click.echo(format_comparison(result))


@cli.command()
@_DATA_OPTION
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("var/ablation"),
              show_default=True, help="Folder for the runs, ablation.md/.json/.png.")
@click.option("--variants", default=None, help="Comma-separated variants (default: every Table 2 row).")
@click.option("--peers", is_flag=True, help="Add torch-rechub GRU4Rec, NARM and SASRec rows (bench extra).")
@_many_rows_options
def ablate(ctx: click.Context, data_dir: Path, out: Path, variants: str | None, peers: bool, epochs: int | None,
           batch_size: int | None, test_days: float, test_anchor: str, cache_dir: str, boot: int, jobs: int,
           resume: bool) -> None:
    """Train every Table 2 row on one split and write the table with lifts vs SDM and their intervals."""
    from learner.ablation import TABLE2
    from learner.ablation import ablate as run_ablation

    cfg = _cfg(ctx)
    names = tuple(_check_variant(v.strip()) for v in variants.split(",") if v.strip()) if variants else TABLE2
    report = run_ablation(_split(cfg, data_dir, test_days, test_anchor, cache_dir), out, names,
                          _train_settings(cfg, epochs, batch_size, 3), model_overrides(cfg.model), peers, n_boot=boot,
                          workers=jobs, resume=resume)
    click.echo((out / "ablation.md").read_text())
    click.echo(f"written: {out / 'ablation.md'}, {out / 'ablation.json'}, {out / 'ablation.png'} "
               f"in {report['timings']['total_s']:.0f} s")


@cli.command()
@_DATA_OPTION
@click.option("--param", required=True, help="Model setting to choose, e.g. model.triplet_weight.")
@click.option("--values", required=True, help="Comma-separated values to try, e.g. 10,1,0.3,0.1.")
@click.option("--model", "variant", default="xdm", show_default=True, help="Variant trained with each value.")
@click.option("--baseline", default="sdm", show_default=True, help="Row every value is compared with ('' = none).")
@click.option("--select", default="hr@50", show_default=True, help="Metric that picks the best value.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("var/tuning"),
              show_default=True, help="Folder for the runs, tune.md/.json/.png.")
@_many_rows_options
def tune(ctx: click.Context, data_dir: Path, param: str, values: str, variant: str, baseline: str, select: str,
         out: Path, epochs: int | None, batch_size: int | None, test_days: float, test_anchor: str, cache_dir: str,
         boot: int, jobs: int, resume: bool) -> None:
    """Pick a model setting on a validation split cut before the test period (the test days are never read)."""
    from learner.tuning import parse_grid
    from learner.tuning import tune as run_tuning

    cfg = _cfg(ctx)
    name, grid = parse_grid(param, values)
    report = run_tuning(_split(cfg, data_dir, test_days, test_anchor, cache_dir), out, name, grid,
                        _check_variant(variant), _check_variant(baseline) if baseline else None,
                        _train_settings(cfg, epochs, batch_size, 3), model_overrides(cfg.model), select.lower(),
                        n_boot=boot, workers=jobs, resume=resume)
    click.echo((out / "tune.md").read_text())
    click.echo(f"best: --set model.{name}={report['best']['value']}; written: {out / 'tune.md'}, "
               f"{out / 'tune.json'}, {out / 'tune.png'}")


def _print_answer(user_id: str, answer) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (f"Recall({user_id}) arm={answer.arm} model_version={answer.model_version}"
             f"{' FALLBACK' if answer.fallback else ''}")
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("item")
    table.add_column("score", justify="right")
    for rank, item in enumerate(answer.items, start=1):
        table.add_row(str(rank), item.item_id, f"{item.score:.4f}")
    Console().print(table)


def _run_until_interrupted(proc) -> None:
    click.echo(f"{proc.name} listening on {proc.address} (log {proc.log_path}); Ctrl-C stops it")
    try:
        proc.popen.wait()
    except KeyboardInterrupt:
        pass
    finally:
        proc.stop()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _wait_forever() -> None:
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass


def main() -> None:
    cli(prog_name="xdm")


if __name__ == "__main__":
    main()
