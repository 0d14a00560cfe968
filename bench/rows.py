"""The rows of the benchmark. Each returns its table lines and the raw numbers behind them.

Every measurement of the uploader runs the real engine (``DataUploader`` with the built-in
``postgres`` and ``sftp`` plugins) against the servers of this run, in a child process
(:mod:`bench.child`) unless it must share a clock with the writer (row 5). References run in
the same row, interleaved with the uploader's repetitions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from servers import PostgresEndpoint, SftpDirs
from servers.keys import known_hosts_line

from . import baseline, openssh
from .child import LIMITED_PENDING
from .env import ROOT, Bench, Site
from .link import DelayLink
from .measure import (
    ChildFailed,
    child_command,
    log_problems,
    parse_result,
    run_child,
    summarize_folded,
)
from .packages import (
    MIB,
    DocumentTemplate,
    event_ids,
    link_packages,
    write_small_packages,
    write_video,
)
from .report import Line, not_available

GIB = 1 << 30
MB = 1e6
GB = 1e9


@dataclass(frozen=True)
class Scale:
    large_file: int = GIB
    large_reps: int = 5
    small_events: int = 500
    small_video: int = MIB
    # With 3, row 2's ratio to the floor moved between 1.07x and 1.37x from one full run to
    # the next; the median of 5 moves less.
    small_reps: int = 5
    baseline_events: int = 100
    backlog_events: int = 100_000
    big_video: int = 4 * GIB
    big_video_min_free: int = 12 * 10**9
    latency_events: int = 50
    latency_interval: float = 1.0
    fleet_engines: int = 20
    fleet_events: int = 100
    fleet_video: int = 256 * 1024
    workers: tuple[int, ...] = (1, 2, 4)
    # Row 7 over a link with this round-trip time, with fewer events (each waits for it).
    link_rtt: float = 0.02
    link_events: int = 100
    link_reps: int = 3  # far from their targets, and each floor run there takes 20 s

    @classmethod
    def quick(cls) -> Scale:
        return cls(large_file=32 * MIB, large_reps=1, small_events=20, small_reps=1, link_reps=1,
                   baseline_events=5, backlog_events=2_000, big_video=64 * MIB,
                   big_video_min_free=1 * 10**9, latency_events=4, latency_interval=0.5,
                   fleet_engines=3, fleet_events=10, fleet_video=64 * 1024, link_events=10)


@dataclass
class Context:
    bench: Bench
    scale: Scale
    profile_dir: Path | None = None  # where profiles of missed targets go; None: no profiling
    stamp: str = "run"
    say: Callable[[str], None] = print
    profiles: dict[str, str] = field(default_factory=dict)

    @property
    def scratch(self) -> Path:
        return self.bench.scratch


@dataclass
class RowResult:
    lines: list[Line]
    details: dict[str, Any]


# --- helpers


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _fmt_bytes(size: int) -> str:
    if size >= GIB:
        return f"{size / GIB:g} GiB"
    if size >= MIB:
        return f"{size / MIB:g} MiB"
    return f"{size / 1024:g} KiB" if size >= 1024 else f"{size} B"


def _settled_config(site: Site, transport: str | None = None,
                    **overrides: Any) -> dict[str, Any]:
    """The service's own defaults where they matter (settle 2 s); packages are back-dated.
    ``transport``: the SFTP plugin's, when not its default."""
    base: dict[str, Any] = {"settle_seconds": 2}
    base.update(overrides)
    config = site.config(**base)
    if transport is not None:
        config["uploader"]["sftp"]["transport"] = transport
    return config


def _fresh(ctx: Context, tag: str) -> tuple[PostgresEndpoint, SftpDirs]:
    pg = ctx.bench.database(tag)
    sftp = ctx.bench.remote_dirs(tag)
    ctx.bench.init_db(pg, sftp)
    return pg, sftp


def _cleanup(ctx: Context, pg: PostgresEndpoint | None, sftp: SftpDirs | None,
             *paths: Path) -> None:
    if pg is not None:
        ctx.bench.drop_database(pg)
    if sftp is not None:
        shutil.rmtree(sftp.local_dir, ignore_errors=True)
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _over_link(ctx: Context, pg: PostgresEndpoint | None, sftp: SftpDirs,
               rtt: float) -> Iterator[tuple[PostgresEndpoint | None, SftpDirs]]:
    """The endpoints as seen through links with ``rtt`` seconds of round trip (unchanged for
    0). The SFTP server's key is pinned for the link's port in a known_hosts file of its own,
    so host key checking stays strict."""
    if not rtt:
        yield pg, sftp
        return
    with contextlib.ExitStack() as stack:
        sftp_link = stack.enter_context(DelayLink(sftp.endpoint.host, sftp.endpoint.port,
                                                  rtt / 2))
        known_hosts = ctx.scratch / f"{ctx.bench.unique('known_hosts')}"
        _, key_type, key_data = sftp.endpoint.known_hosts_path.read_text().split()[:3]
        known_hosts.write_text(known_hosts_line(sftp.endpoint.host, sftp_link.port,
                                                f"{key_type} {key_data}"))
        endpoint = dataclasses.replace(sftp.endpoint, port=sftp_link.port,
                                       known_hosts_path=known_hosts)
        if pg is not None:
            pg_link = stack.enter_context(DelayLink(pg.host, pg.port, rtt / 2))
            pg = dataclasses.replace(pg, port=pg_link.port)
        yield pg, dataclasses.replace(sftp, endpoint=endpoint)


def _expect_completed(result: dict[str, Any], count: int, what: str, *,
                      up_to: int | None = None) -> None:
    """Raise unless ``count`` events (or up to ``up_to``) completed."""
    completed = result.get("completed")
    if not isinstance(completed, int) or not count <= completed <= (up_to or count):
        problems = "\n".join(log_problems(result.get("log", ""))) or "(no warnings logged)"
        raise ChildFailed(f"{what}: {result.get('completed')} of {count} events completed "
                          f"(outcomes {result.get('outcomes')}); log {result.get('log')}:\n"
                          f"{problems}")


def _profile(ctx: Context, name: str, spec: dict[str, Any], workdir: Path,
             prepare: Callable[[], None] | None = None) -> None:
    """Run the uploader once more under py-spy and keep the folded stacks and a summary."""
    if ctx.profile_dir is None:
        return
    if prepare is not None:
        prepare()
    folded = ctx.profile_dir / f"{ctx.stamp}-{name}.folded"
    ctx.say(f"    profiling {name} with py-spy -> {folded}")
    try:
        run_child(spec, workdir, f"profile-{name}", profile_to=folded)
    except (ChildFailed, subprocess.SubprocessError, OSError) as exc:
        ctx.say(f"    profiling failed: {exc}")
        return
    if folded.exists():
        summary = ctx.profile_dir / f"{ctx.stamp}-{name}.profile.txt"
        summary.write_text(summarize_folded(folded))
        ctx.profiles[name] = str(summary)
        # The raw stacks (for flame graphs) are kept, compressed.
        with open(folded, "rb") as raw, gzip.open(f"{folded}.gz", "wb") as packed:
            shutil.copyfileobj(raw, packed)
        folded.unlink()


def _profile_memory(ctx: Context, name: str, spec: dict[str, Any], workdir: Path) -> None:
    """Run the uploader once more under tracemalloc; keep the largest heap's top sites."""
    if ctx.profile_dir is None:
        return
    ctx.say(f"    tracing {name}'s memory with tracemalloc (slow)")
    try:
        result = run_child({**spec, "tracemalloc": 15}, workdir, f"memory-{name}")
    except (ChildFailed, subprocess.SubprocessError, OSError) as exc:
        ctx.say(f"    memory tracing failed: {exc}")
        return
    traced = result.get("tracemalloc") or {}
    out = [f"Python heap at its largest: {traced.get('largest_seen', 0) / MB:.1f} MB traced "
           f"(peak {traced.get('peak', 0) / MB:.1f} MB); RSS under tracing is not comparable.",
           "", "bytes      allocations  where (newest frame first)"]
    out += [f"{t['bytes'] / MB:7.1f} MB  {t['count']:>10,}  {t['where']}"
            for t in traced.get("top", [])]
    summary = ctx.profile_dir / f"{ctx.stamp}-{name}.memory.txt"
    summary.write_text("\n".join(out) + "\n")
    ctx.profiles[f"{name}-memory"] = str(summary)


def workers_supported() -> tuple[bool, str]:
    """Whether the engine accepts ``uploader.workers`` (checked with in-memory plugins)."""
    import tempfile

    from uploader_core import ConfigurationError, DataUploader
    from uploader_core.testing import memory_plugins

    with tempfile.TemporaryDirectory() as tmp:
        config = {"uploader": {"pending_upload_dir": f"{tmp}/p", "uploaded_dir": f"{tmp}/u",
                               "failed_dir": f"{tmp}/f", "workers": 2}}
        try:
            DataUploader(config, plugins=memory_plugins()[2], load_entry_points=False).close()
        except ConfigurationError as exc:
            return False, " ".join(str(exc).split())
    return True, ""


# --- row 1: one large file


def _large_file_round(ctx: Context, src_video: Path, size: int, rep: int, workers: int | None,
                      pg: PostgresEndpoint, sftp: SftpDirs, template: DocumentTemplate,
                      profile: bool = False, transport: str | None = None) -> dict[str, Any]:
    event_id = f"large-{rep}-w{workers or 0}-{transport or 'default'}"
    site = Site(ctx.scratch / ctx.bench.unique("large"), pg, sftp)
    site.make_dirs()
    os.link(src_video, site.pending / f"{event_id}.mp4")
    (site.pending / f"{event_id}.json").write_bytes(template(event_id))
    stamp = time.time() - 60
    for suffix in (".mp4", ".json"):
        os.utime(site.pending / f"{event_id}{suffix}", (stamp, stamp))
    extra = {} if workers is None else {"workers": workers}
    spec = {"config": _settled_config(site, transport, **extra)}
    try:
        if profile:
            _profile(ctx, f"row1-w{workers or 1}", spec, site.root)
            return {}
        result = run_child(spec, site.root, event_id)
        _expect_completed(result, 1, "row 1")
        total = size + (site.uploaded / f"{event_id}.json").stat().st_size
        return {"wall": result["wall"], "cpu": result["cpu"], "bytes": total,
                "maxrss": result["maxrss"], "cipher": result["cipher"]}
    finally:
        for d in (sftp.local_video_dir, sftp.local_json_dir):
            for p in d.iterdir():
                p.unlink()
        shutil.rmtree(site.root, ignore_errors=True)


def _openssh_large(ctx: Context, src_video: Path, size: int, sftp: SftpDirs,
                   tag: str) -> dict[str, Any]:
    remote = f"{sftp.remote_video_dir}/openssh-{tag}.mp4"
    batch = ctx.scratch / f"{ctx.bench.unique('batch')}.txt"
    try:
        m = openssh.batch_put(sftp.endpoint, [(src_video, remote)], batch)
    finally:
        with contextlib.suppress(FileNotFoundError):
            (sftp.local_video_dir / f"openssh-{tag}.mp4").unlink()
        batch.unlink(missing_ok=True)
    return {"wall": m.wall, "cpu": m.cpu, "bytes": size, "cipher": m.cipher}


def _rate(run: dict[str, Any]) -> float:
    """MB/s of one upload."""
    return float(run["bytes"] / run["wall"] / MB)


def _sha256_cpu_per_gb() -> float:
    """CPU seconds this machine needs to hash a GB with hashlib's SHA-256."""
    import hashlib

    block = os.urandom(MIB)
    hasher = hashlib.sha256()
    started = time.process_time()
    for _ in range(256):
        hasher.update(block)
    return (time.process_time() - started) / (256 * MIB / GB)


def row_large_file(ctx: Context) -> RowResult:
    size = ctx.scale.large_file
    pg, sftp = _fresh(ctx, "large")
    src = ctx.scratch / ctx.bench.unique("large-src")
    src.mkdir()
    video = src / "source.mp4"
    write_video(video, size)
    template = DocumentTemplate()
    ours: list[dict[str, Any]] = []
    piped: list[dict[str, Any]] = []  # transport openssh
    theirs: list[dict[str, Any]] = []
    try:
        for rep in range(ctx.scale.large_reps):
            # Rotate who goes first, so drift of the machine hits all alike.
            order = ("uploader", "openssh", "piped")
            for who in order[rep % 3:] + order[: rep % 3]:
                if who == "uploader":
                    ours.append(_large_file_round(ctx, video, size, rep, None, pg, sftp,
                                                  template))
                elif who == "piped":
                    piped.append(_large_file_round(ctx, video, size, rep, None, pg, sftp,
                                                   template, transport="openssh"))
                else:
                    theirs.append(_openssh_large(ctx, video, size, sftp, str(rep)))
            ctx.say(f"    rep {rep + 1}: uploader {_rate(ours[-1]):.0f} MB/s (transport openssh "
                    f"{_rate(piped[-1]):.0f}), OpenSSH {_rate(theirs[-1]):.0f} MB/s")
        up_rate = _median([_rate(r) for r in ours])
        piped_rate = _median([_rate(r) for r in piped])
        ssh_rate = _median([_rate(r) for r in theirs])
        up_cpu = _median([r["cpu"] / (r["bytes"] / GB) for r in ours])
        piped_cpu = _median([r["cpu"] / (r["bytes"] / GB) for r in piped])
        ssh_cpu = _median([r["cpu"] / (r["bytes"] / GB) for r in theirs])
        reps = ctx.scale.large_reps
        sha = _sha256_cpu_per_gb()
        note = (f"{_fmt_bytes(size)} file, median of {reps}; ciphers: uploader "
                f"{ours[0]['cipher']}, OpenSSH {theirs[0]['cipher']}")
        cpu_note = (f"of the uploader's, {sha:.2f} s/GB is the video's SHA-256 (recorded in "
                    "the database; OpenSSH computes none)")
        lines = [
            Line("1", f"throughput, {_fmt_bytes(size)} file", up_rate, ssh_rate, "MB/s",
                 up_rate / ssh_rate, ">= 1.0x OpenSSH", up_rate / ssh_rate >= 1.0, note),
            Line("1", "CPU per GB sent", up_cpu, ssh_cpu, "s/GB", up_cpu / ssh_cpu,
                 "<= 2.0x OpenSSH", up_cpu / ssh_cpu <= 2.0, cpu_note),
            Line("1", "throughput, transport openssh", piped_rate, ssh_rate, "MB/s",
                 piped_rate / ssh_rate, ">= 1.0x OpenSSH", piped_rate / ssh_rate >= 1.0,
                 "the uploader with sftp.transport: openssh (OpenSSH's client under paramiko's "
                 "SFTP client), same runs"),
            Line("1", "CPU per GB sent, transport openssh", piped_cpu, ssh_cpu, "s/GB",
                 piped_cpu / ssh_cpu, "<= 2.0x OpenSSH", piped_cpu / ssh_cpu <= 2.0,
                 "the uploader's process and its ssh client together"),
        ]
        if ctx.profile_dir is not None and not all(line.met for line in lines):
            _large_file_round(ctx, video, size, 99, None, pg, sftp, template, profile=True)
        return RowResult(lines, {"uploader": ours, "transport_openssh": piped,
                                 "openssh": theirs})
    finally:
        _cleanup(ctx, pg, sftp, src)


# --- row 2: many small events


def _small_uploader(ctx: Context, src: Path, ids: list[str], workers: int | None = None,
                    profile_name: str | None = None, rtt: float = 0.0,
                    transport: str | None = None,
                    cpu_affinity: str | None = None) -> dict[str, Any]:
    pg, sftp = _fresh(ctx, "small")
    root = ctx.scratch / ctx.bench.unique("small")
    try:
        with _over_link(ctx, pg, sftp, rtt) as (seen_pg, seen_sftp):
            assert seen_pg is not None
            site = Site(root, seen_pg, seen_sftp)
            site.make_dirs()
            link_packages(src, site.pending, ids)
            extra: dict[str, Any] = {} if workers is None else {"workers": workers}
            if cpu_affinity is not None:
                extra["cpu_affinity"] = cpu_affinity
            spec = {"config": _settled_config(site, transport, **extra)}
            if profile_name:
                _profile(ctx, profile_name, spec, site.root)
                return {}
            result = run_child(spec, site.root, "small")
        _expect_completed(result, len(ids), "row 2")
        return {"wall": result["wall"], "cpu": result["cpu"], "maxrss": result["maxrss"],
                "connections": result.get("connections_made"), "cipher": result["cipher"],
                "phase_seconds": result.get("phase_seconds", {}),
                "machine_cpu": result.get("machine_cpu", 0.0), "cpus": result.get("cpus")}
    finally:
        _cleanup(ctx, pg, sftp, root)


def _small_floor(ctx: Context, src: Path, ids: list[str], rtt: float = 0.0) -> dict[str, Any]:
    sftp = ctx.bench.remote_dirs("floor")
    batch = ctx.scratch / f"{ctx.bench.unique('batch')}.txt"
    pairs: list[tuple[Path, str]] = []
    for event_id in ids:
        pairs.append((src / f"{event_id}.mp4", f"{sftp.remote_video_dir}/{event_id}.mp4"))
        pairs.append((src / f"{event_id}.json", f"{sftp.remote_json_dir}/{event_id}.json"))
    try:
        with _over_link(ctx, None, sftp, rtt) as (_, seen):
            m = openssh.batch_put(seen.endpoint, pairs, batch)
    finally:
        _cleanup(ctx, None, sftp, batch)
    return {"wall": m.wall, "cpu": m.cpu, "cipher": m.cipher, "machine_cpu": m.machine_cpu}


def _machine_note(runs: list[dict[str, Any]], floors: list[dict[str, Any]]) -> str:
    """The whole machine's CPU seconds for the uploader's runs and the floor's (medians), and
    the shortest time the uploader's could take on this machine's cores."""
    cores = os.cpu_count() or 1
    ours = _median([r["machine_cpu"] for r in runs])
    theirs = _median([r["machine_cpu"] for r in floors])
    return (f"whole machine (client, sshd, PostgreSQL): {ours:.2f} CPU s vs the floor's "
            f"{theirs:.2f}; on {cores} cores the uploader's run cannot take less than "
            f"{ours / cores:.2f} s")


def _small_baseline(ctx: Context, src: Path, ids: list[str]) -> dict[str, Any]:
    pg = ctx.bench.database("baseline")
    sftp = ctx.bench.remote_dirs("baseline")
    work = ctx.scratch / ctx.bench.unique("baseline")
    try:
        baseline.create_table(pg)
        link_packages(src, work / "pending", ids)
        wall = baseline.run(ids, work / "pending", work / "uploaded", pg, sftp)
        with psycopg.connect(pg.conninfo()) as conn:
            row = conn.execute("SELECT count(*) FROM baseline_events "
                               "WHERE status = 'completed'").fetchone()
        if not row or row[0] != len(ids):
            raise RuntimeError(f"baseline completed {row} of {len(ids)} events")
        return {"wall": wall, "events": len(ids)}
    finally:
        _cleanup(ctx, pg, sftp, work)


def _per_event_phases(runs: list[dict[str, Any]], n: int) -> str:
    """Milliseconds per event from entering each phase to entering the next, medians over the
    runs. With one worker neighbouring jobs overlap, so these add up to more than the wall
    time per event: each includes the other jobs' work done meanwhile. The archive's includes
    the wait for the jobs after it, whose moves share its fsyncs."""
    names = {"store_metadata": "record", "transfer": "transfer", "mark_completed": "complete",
             "archive": "archive"}
    parts = []
    for phase, label in names.items():
        values = [r["phase_seconds"].get(phase, 0.0) for r in runs if r.get("phase_seconds")]
        if values:
            parts.append(f"{label} {1000 * _median(values) / n:.1f} ms")
    return ", ".join(parts)


def _small_source(ctx: Context, count: int, video: int) -> tuple[Path, list[str]]:
    src = ctx.scratch / ctx.bench.unique("small-src")
    ids = event_ids("evt", count)
    write_small_packages(src, ids, video, age_seconds=60)
    return src, ids


def row_small_events(ctx: Context) -> RowResult:
    n = ctx.scale.small_events
    src, ids = _small_source(ctx, n, ctx.scale.small_video)
    ours: list[dict[str, Any]] = []
    piped: list[dict[str, Any]] = []  # transport openssh
    spread: list[dict[str, Any]] = []  # cpu_affinity inherited: threads on any CPU
    floors: list[dict[str, Any]] = []
    try:
        for rep in range(ctx.scale.small_reps):
            order = ("uploader", "floor", "piped", "spread")
            for who in order[rep % 4:] + order[: rep % 4]:
                if who == "uploader":
                    ours.append(_small_uploader(ctx, src, ids))
                elif who == "piped":
                    piped.append(_small_uploader(ctx, src, ids, transport="openssh"))
                elif who == "spread":
                    spread.append(_small_uploader(ctx, src, ids, cpu_affinity="inherited"))
                else:
                    floors.append(_small_floor(ctx, src, ids))
            ctx.say(f"    rep {rep + 1}: uploader {ours[-1]['wall']:.2f} s (transport openssh "
                    f"{piped[-1]['wall']:.2f} s, threads on any CPU {spread[-1]['wall']:.2f} s), "
                    f"OpenSSH batch {floors[-1]['wall']:.2f} s for {n} events")
        base_ids = ids[: ctx.scale.baseline_events]
        base = _small_baseline(ctx, src, base_ids)
        ctx.say(f"    baseline: {len(base_ids)} events in {base['wall']:.2f} s")
        up_time = _median([r["wall"] for r in ours])
        floor_time = _median([r["wall"] for r in floors])
        up_rate = n / up_time
        base_rate = base["events"] / base["wall"]
        up_cpu = _median([r["cpu"] for r in ours])
        floor_cpu = _median([r["cpu"] for r in floors])
        piped_time = _median([r["wall"] for r in piped])
        piped_cpu = _median([r["cpu"] for r in piped])
        spread_time = _median([r["wall"] for r in spread])
        spread_cpu = _median([r["cpu"] for r in spread])
        phases = _per_event_phases(ours, n)
        ctx.say(f"    uploader per event: {phases}; OpenSSH batch {1000 * floor_time / n:.1f} ms")
        size = _fmt_bytes(ctx.scale.small_video)
        lines = [
            Line("2", f"{n} x ({size} video + JSON), vs spec read literally", up_rate,
                 base_rate, "events/s", up_rate / base_rate, ">= 15x baseline",
                 up_rate / base_rate >= 15,
                 f"baseline: new SSH + DB connection per job, plain INSERT/UPDATE, measured "
                 f"on {len(base_ids)} of the {n} events"),
            Line("2", "time vs OpenSSH sftp -b (no DB), 1 worker", up_time, floor_time, "s",
                 up_time / floor_time, "<= 1.3x floor", up_time / floor_time <= 1.3,
                 f"median of {ctx.scale.small_reps}; uploader includes its database work; "
                 f"per event, phase to phase (jobs overlap; archive moves wait up to 50 ms to "
                 f"be grouped) {phases}"),
            Line("2", "CPU seconds for the batch", up_cpu, floor_cpu, "s", up_cpu / floor_cpu,
                 "", None, "uploader process vs sftp + ssh processes; "
                 + _machine_note(ours, floors)),
            Line("2", "time vs the floor, 1 worker, transport openssh", piped_time, floor_time,
                 "s", piped_time / floor_time, "<= 1.3x floor", piped_time / floor_time <= 1.3,
                 f"median of {ctx.scale.small_reps}; sftp.transport: openssh, same runs"),
            Line("2", "CPU seconds for the batch, transport openssh", piped_cpu, floor_cpu, "s",
                 piped_cpu / floor_cpu, "", None,
                 "the uploader's process and its ssh client; " + _machine_note(piped, floors)),
            Line("2", "time vs the floor, 1 worker, threads on any CPU", spread_time,
                 floor_time, "s", spread_time / floor_time, "reported", None,
                 f"median of {ctx.scale.small_reps}; uploader.cpu_affinity: inherited (the "
                 f"default keeps the engine's threads on one CPU), same runs; its CPU "
                 f"{spread_cpu:.2f} s against {up_cpu:.2f} s; " + _machine_note(spread, floors)),
        ]
        if ctx.profile_dir is not None and not all(line.met for line in lines[:2]):
            _small_uploader(ctx, src, ids, profile_name="row2")
        return RowResult(lines, {"uploader": ours, "transport_openssh": piped,
                                 "cpu_affinity_inherited": spread, "floor": floors,
                                 "baseline": base})
    finally:
        shutil.rmtree(src, ignore_errors=True)


# --- row 3: backlog


def row_backlog(ctx: Context) -> RowResult:
    n = ctx.scale.backlog_events
    pg, sftp = _fresh(ctx, "backlog")
    site = Site(ctx.scratch / ctx.bench.unique("backlog"), pg, sftp)
    site.make_dirs()
    try:
        started = time.perf_counter()
        write_small_packages(site.pending, event_ids("old", n), 16, age_seconds=7 * 86400)
        ctx.say(f"    wrote {n} packages in {time.perf_counter() - started:.1f} s")
        spec = {"config": _settled_config(site), "pause_after_first": True, "snapshots": 5,
                "time_scan": True}
        # A pass over the whole backlog, several times (each uploads a job or two of it): the
        # discovery time is the median, the peak RSS the largest.
        runs = []
        for rep in range(ctx.scale.small_reps):
            runs.append(run_child({**spec, "control_socket": str(site.root / f"ctl{rep}.sock")},
                                  site.root, f"backlog-{rep}"))
            # Paused once the first job completed; with one worker the next job's transfer
            # is already under way then, and it finishes.
            _expect_completed(runs[-1], 1, "row 3", up_to=2)
        discoveries = [r["marks"]["first_phase"] - r["marks"]["pass_started"] for r in runs]
        discovery = _median(discoveries)
        result = runs[discoveries.index(sorted(discoveries)[len(runs) // 2])]
        marks = result["marks"]
        first_upload = marks["first_completed"] - marks["pass_started"]
        rss = max(r["maxrss"] for r in runs) / MB
        rss_first = result.get("rss_at_first_completed", 0) / MB
        snap = result["snapshot"]
        control = result.get("control") or {}
        lines = [
            Line("3", f"backlog {n:,}: discovery before first upload", discovery, None, "s",
                 None, "<= 1 s", discovery <= 1.0,
                 f"median of {len(runs)} passes ({', '.join(f'{d:.2f}' for d in discoveries)}"
                 f" s); in that one, the first upload completed {first_upload:.2f} s after the "
                 f"pass started; scanner.scan() alone: {result['scan']['seconds']:.2f} s"),
            Line("3", "peak RSS", rss, None, "MB", None, "<= 150 MB", rss <= 150,
                 f"the largest of {len(runs)} passes; {rss_first:.0f} MB when the first upload "
                 "completed; the peak includes the snapshots below"),
            Line("3", "monitor.snapshot()", snap["median"] * 1000, None, "ms", None,
                 "<= 200 ms", snap["median"] <= 0.2,
                 f"median of 5 (max {snap['max'] * 1000:.0f} ms), the oldest "
                 f"{snap.get('listed', 0):,} of {snap['pending_count']:,} pending listed"),
        ]
        if control.get("available"):
            lines.append(Line("3", "control socket snapshot round trip",
                              control["median"] * 1000, None, "ms", None, "<= 200 ms",
                              control["median"] <= 0.2,
                              f"median of 5, reply {control['reply_bytes'] / MB:.1f} MB "
                              "(the default snapshot the TUI asks for); with pending_limit "
                              f"{LIMITED_PENDING}: {control['limited_median'] * 1000:.0f} ms"))
        else:
            lines.append(not_available("3", "control socket snapshot round trip",
                                       control.get("reason", "uploader_core.control missing")))
        if ctx.profile_dir is not None and not all(line.met for line in lines if
                                                   line.met is not None):
            again = {**spec, "control_socket": str(site.root / "ctl-profile.sock")}
            _profile(ctx, "row3", again, site.root)
            if not lines[1].met:
                _profile_memory(ctx, "row3", {**again, "control_socket": None}, site.root)
        return RowResult(lines, {"child": result, "runs": runs})
    finally:
        _cleanup(ctx, pg, sftp, site.root)


# --- row 4: memory with a very large video


def row_big_video(ctx: Context) -> RowResult:
    size = ctx.scale.big_video
    free = ctx.bench.free_bytes()
    note = ""
    least = min(free.values())
    if least < ctx.scale.big_video_min_free:
        scaled = max(256 * MIB, (least - 2 * GIB) // 2 // MIB * MIB)
        note = (f"only {least / GB:.1f} GB free (local {free['local'] / GB:.1f}, remote "
                f"{free['remote'] / GB:.1f}): scaled down from {_fmt_bytes(size)} to "
                f"{_fmt_bytes(scaled)}; ")
        ctx.say(f"    NOTE: {note}")
        size = scaled
    pg, sftp = _fresh(ctx, "big")
    site = Site(ctx.scratch / ctx.bench.unique("big"), pg, sftp)
    site.make_dirs()
    try:
        started = time.perf_counter()
        write_video(site.pending / "huge.mp4", size)
        (site.pending / "huge.json").write_bytes(DocumentTemplate()("huge"))
        stamp = time.time() - 60
        for name in ("huge.mp4", "huge.json"):
            os.utime(site.pending / name, (stamp, stamp))
        ctx.say(f"    wrote {_fmt_bytes(size)} in {time.perf_counter() - started:.1f} s")
        spec = {"config": _settled_config(site)}
        result = run_child(spec, site.root, "big")
        _expect_completed(result, 1, "row 4")
        piped = _big_video_over_openssh(ctx, site, pg)
        rss = result["maxrss"] / MB
        if ctx.profile_dir is not None and rss > 80:
            for p in site.uploaded.iterdir():
                os.replace(p, site.pending / p.name)
            with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
                conn.execute("DELETE FROM events")
            _profile_memory(ctx, "row4", spec, site.root)
        lines = [Line("4", f"peak RSS uploading a {_fmt_bytes(size)} video", rss, None, "MB",
                      None, "<= 80 MB", rss <= 80,
                      f"{note}{result['rss_after_construct'] / MB:.0f} MB once the engine "
                      "was built; "
                      f"{size / result['wall'] / MB:.0f} MB/s, "
                      f"{result['cpu'] / (size / GB):.2f} CPU s/GB")]
        ssh_rss = sum(piped["children_maxrss"].values()) / MB
        lines.append(Line("4", "peak RSS, transport openssh: uploader + its ssh client",
                          piped["maxrss"] / MB + ssh_rss, None, "MB", None, "reported", None,
                          f"uploader {piped['maxrss'] / MB:.1f} MB, ssh {ssh_rss:.1f} MB "
                          f"({len(piped['children_maxrss'])} process); "
                          f"{size / piped['wall'] / MB:.0f} MB/s, "
                          f"{piped['cpu'] / (size / GB):.2f} CPU s/GB with the ssh client",
                          extra={"ssh_client_mb": ssh_rss}))
        return RowResult(lines, {"child": result, "transport_openssh": piped, "bytes": size})
    finally:
        _cleanup(ctx, pg, sftp, site.root)


def _big_video_over_openssh(ctx: Context, site: Site, pg: PostgresEndpoint) -> dict[str, Any]:
    """Row 4's upload again with ``sftp.transport: openssh``: the same video, moved back."""
    for path in site.uploaded.iterdir():
        os.replace(path, site.pending / path.name)
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        conn.execute("DELETE FROM events")
    result = run_child({"config": _settled_config(site, "openssh")}, site.root, "big-openssh")
    _expect_completed(result, 1, "row 4 (transport openssh)")
    return result


# --- row 5: latency


def row_latency(ctx: Context) -> RowResult:
    from uploader_core import DataUploader
    from uploader_core.monitor import EventKind

    n = ctx.scale.latency_events
    interval = ctx.scale.latency_interval
    settle = 0.5
    scan_interval = 0.2
    pg, sftp = _fresh(ctx, "latency")
    site = Site(ctx.scratch / ctx.bench.unique("latency"), pg, sftp)
    site.make_dirs()
    video = (os.urandom(MIB))
    template = DocumentTemplate()
    config = site.config(settle_seconds=settle, scan_interval_seconds=scan_interval,
                         log_level="WARNING")
    completed: dict[str, float] = {}
    done = threading.Condition()

    def on_event(event: Any) -> None:
        if event.kind is EventKind.COMPLETED and event.event_id:
            with done:
                completed[event.event_id] = event.time
                done.notify_all()

    def write(event_id: str) -> float:
        (site.pending / f"{event_id}.mp4").write_bytes(video)
        json_path = site.pending / f"{event_id}.json"
        json_path.write_bytes(template(event_id))
        return json_path.stat().st_mtime_ns / 1e9

    def wait_for(ids: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with done:
            while not ids <= set(completed):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                done.wait(left)
        return True

    engine = DataUploader(config)
    engine.monitor.subscribe(on_event)
    thread = threading.Thread(target=engine.run, name="bench-engine", daemon=True)
    thread.start()
    written: dict[str, float] = {}
    try:
        # A running engine has its connections already: one event first, not counted.
        write("warmup")
        if not wait_for({"warmup"}, 60):
            raise RuntimeError("row 5: the warm-up event did not complete within 60 s")
        next_at = time.monotonic()
        for i in range(n):
            next_at += interval
            event_id = f"live-{i:04d}"
            written[event_id] = write(event_id)
            time.sleep(max(0.0, next_at - time.monotonic()))
        if not wait_for(set(written), 60 + n):
            raise RuntimeError(f"row 5: only {len(completed) - 1} of {n} events completed")
    finally:
        engine.request_stop()
        thread.join(timeout=30)
    try:
        with psycopg.connect(pg.conninfo()) as conn:
            rows: dict[str, float] = dict(conn.execute(
                "SELECT event_id, extract(epoch FROM completed_at)::float8 FROM events "
                "WHERE completed_at IS NOT NULL").fetchall())
        latencies = sorted(rows[e] - (written[e] + settle) for e in written)
        monitor_latencies = sorted(completed[e] - (written[e] + settle) for e in written)
        p50 = _percentile(latencies, 50)
        p95 = _percentile(latencies, 95)
        note = (f"{n} x {_fmt_bytes(MIB)} one every {interval:g} s; scan_interval "
                f"{scan_interval} s, settle {settle} s; from JSON mtime + settle to "
                f"completed_at in the database")
        lines = [
            Line("5", "latency settle -> completed, p50", p50, None, "s", None, "<= 1 s",
                 p50 <= 1.0, note),
            Line("5", "latency settle -> completed, p95", p95, None, "s", None, "reported",
                 None, f"max {latencies[-1]:.2f} s; archived (monitor) p50 "
                       f"{_percentile(monitor_latencies, 50):.2f} s"),
        ]
        return RowResult(lines, {"latencies": latencies, "monitor_latencies": monitor_latencies,
                                 "settle_seconds": settle, "scan_interval_seconds": scan_interval})
    finally:
        _cleanup(ctx, pg, sftp, site.root)


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --- row 6: fleet


def _start_together(procs: list[tuple[subprocess.Popen[str], Path]],
                    configs: list[tuple[Site, dict[str, Any]]], name: str) -> None:
    """Start an engine child per site, appending each to ``procs`` (for the caller to kill on
    the way out); return once every one has imported everything and waits for "go"."""
    for site, config in configs:
        spec_path = site.root / f"{name}.spec.json"
        spec_path.write_text(json.dumps({"config": config, "wait_for_go": True}))
        log_path = site.root / f"{name}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(child_command(spec_path), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
        procs.append((proc, log_path))
    for proc, log_path in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise ChildFailed(f"a {name} engine did not start: {log_path.read_text()[-2000:]}")


def _go_together(procs: list[tuple[subprocess.Popen[str], Path]]) -> list[dict[str, Any]]:
    """Let the engines started by :func:`_start_together` run; their results."""
    for proc, _ in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc, log_path in procs:
        out, _ = proc.communicate(timeout=1800)
        results.append(parse_result(out, proc.returncode, log_path))
    return results


def _kill(procs: list[tuple[subprocess.Popen[str], Path]]) -> None:
    for proc, _ in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def row_fleet(ctx: Context) -> RowResult:
    engines = ctx.scale.fleet_engines
    per = ctx.scale.fleet_events
    pg, sftp = _fresh(ctx, "fleet")
    sites = []
    procs: list[tuple[subprocess.Popen[str], Path]] = []
    stop_polling = threading.Event()
    peak = {"connections": 0}
    try:
        for e in range(engines):
            site = Site(ctx.scratch / ctx.bench.unique(f"dev{e:02d}"), pg, sftp)
            site.make_dirs()
            write_small_packages(site.pending, event_ids(f"dev{e:02d}", per),
                                 ctx.scale.fleet_video, age_seconds=60)
            sites.append(site)
        _start_together(procs, [(site, _settled_config(site, database={
            **site.config()["uploader"]["database"],
            "application_name": f"bench-fleet-{e:02d}"})) for e, site in enumerate(sites)],
            "fleet")

        def poll() -> None:
            with psycopg.connect(ctx.bench.postgres.admin_conninfo(), autocommit=True) as conn:
                while not stop_polling.is_set():
                    row = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                        "AND backend_type = 'client backend'", (pg.dbname,)).fetchone()
                    peak["connections"] = max(peak["connections"], row[0] if row else 0)
                    stop_polling.wait(0.02)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        results = _go_together(procs)
        stop_polling.set()
        poller.join(timeout=5)
        for r in results:
            _expect_completed(r, per, "row 6")
        span = max(r["finished_wall"] for r in results) - min(r["started_wall"] for r in results)
        total = sum(r["completed"] for r in results)
        rate = total / span
        lines = [
            Line("6", f"fleet {engines} engines x {per} events: total", rate, None, "events/s",
                 None, "reported", None,
                 f"{_fmt_bytes(ctx.scale.fleet_video)} videos, one PostgreSQL and one sshd, "
                 f"{total} events in {span:.1f} s; engines are processes"),
            Line("6", "peak database connections", peak["connections"], engines, "connections",
                 peak["connections"] / engines, "reported", None,
                 "pg_stat_activity polled every 20 ms; reference = number of engines"),
        ]
        return RowResult(lines, {"span": span, "total": total,
                                 "peak_connections": peak["connections"],
                                 "per_engine_wall": [r["wall"] for r in results]})
    finally:
        stop_polling.set()
        _kill(procs)
        _cleanup(ctx, pg, sftp, *(s.root for s in sites))


# --- row 7: workers


def _beside_floor(measure: Callable[[], dict[str, Any]], floor: Callable[[], dict[str, Any]],
                  reps: int
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float, float, float]:
    """``measure`` and ``floor`` run in ``reps`` pairs, who goes first alternating: the runs
    of each, the median of the pairs' ratios (time over the floor's), and the two median
    times."""
    runs: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    for rep in range(reps):
        if rep % 2 == 0:
            floors.append(floor())
            runs.append(measure())
        else:
            runs.append(measure())
            floors.append(floor())
    ratio = _median([r["wall"] / f["wall"] for r, f in zip(runs, floors, strict=True)])
    return (runs, floors, ratio, _median([r["wall"] for r in runs]),
            _median([f["wall"] for f in floors]))


def _workers_vs_floor(ctx: Context, src: Path, ids: list[str], rtt: float, lines: list[Line],
                      details: dict[str, Any]) -> None:
    """Row 2's events at each worker count, each beside a floor run of its own, repeated: the
    ratio is the median of the pairs' ratios. ``rtt``: over a link with that round trip."""
    n = len(ids)
    where = f" over a {1000 * rtt:g} ms round trip ({n} events)" if rtt else ""
    tag = f"_rtt{1000 * rtt:g}ms" if rtt else ""
    floors: list[dict[str, Any]] = []
    reps = ctx.scale.link_reps if rtt else ctx.scale.small_reps
    for w in ctx.scale.workers:
        runs, pairs, ratio, up_time, floor_time = _beside_floor(
            functools.partial(_small_uploader, ctx, src, ids, workers=w, rtt=rtt),
            lambda: _small_floor(ctx, src, ids, rtt), reps)
        ctx.say(f"    workers={w}{where}: {up_time:.2f} s vs {floor_time:.2f} s "
                f"({ratio:.2f}x)")
        target = "<= 1.3x floor" if w == 1 else "< 1.0x floor"
        met = ratio <= 1.3 if w == 1 else ratio < 1.0
        lines.append(Line("7", f"row 2 time, workers={w}{where}", up_time, floor_time, "s",
                          ratio, target, met,
                          f"median of {reps} pairs; " + _machine_note(runs, pairs)))
        details[f"small_w{w}{tag}"] = runs
        floors.extend(pairs)
    details[f"small_floor{tag}"] = floors


def _split_engines(ctx: Context, src: Path, ids: list[str], count: int) -> dict[str, Any]:
    """``ids`` dealt out to ``count`` engines, each a process of its own with one worker,
    against one database and one remote tree, started together: the time from the first
    engine's start to the last one's end."""
    pg, sftp = _fresh(ctx, "split")
    sites = [Site(ctx.scratch / ctx.bench.unique(f"split{e}"), pg, sftp) for e in range(count)]
    procs: list[tuple[subprocess.Popen[str], Path]] = []
    try:
        for e, site in enumerate(sites):
            site.make_dirs()
            link_packages(src, site.pending, ids[e::count])
        _start_together(procs, [(site, _settled_config(site)) for site in sites], "split")
        results = _go_together(procs)
        for e, r in enumerate(results):
            _expect_completed(r, len(ids[e::count]), "row 7 (engines in processes)")
        return {"wall": max(r["finished_wall"] for r in results)
                - min(r["started_wall"] for r in results),
                "cpu": sum(r["cpu"] for r in results),
                # Each process holds an interpreter of its own: what a device pays in memory.
                "maxrss": sum(r["maxrss"] for r in results),
                # Each engine measured the whole machine over its own run; they overlap.
                "machine_cpu": max(r["machine_cpu"] for r in results)}
    finally:
        _kill(procs)
        _cleanup(ctx, pg, sftp, *(site.root for site in sites))


def _split_engines_vs_floor(ctx: Context, src: Path, ids: list[str], lines: list[Line],
                            details: dict[str, Any]) -> None:
    """Row 2's events split between as many engine processes as the parallel worker counts,
    each beside a floor run of its own: what parallel workers could give if they did not
    share one interpreter (and its lock) in one process. Also their peak memory, all
    processes together, beside that of one process with as many workers (``details`` holds
    those runs already)."""
    for count in (w for w in ctx.scale.workers if w > 1):
        runs, pairs, ratio, up_time, floor_time = _beside_floor(
            functools.partial(_split_engines, ctx, src, ids, count),
            lambda: _small_floor(ctx, src, ids), ctx.scale.small_reps)
        ctx.say(f"    {count} engines in processes: {up_time:.2f} s vs {floor_time:.2f} s "
                f"({ratio:.2f}x)")
        memory = _median([r["maxrss"] for r in runs]) / MB
        threads = _median([r["maxrss"] for r in details[f"small_w{count}"]]) / MB
        lines.append(Line("7", f"row 2 time, {count} engines of 1 worker, one process each",
                          up_time, floor_time, "s", ratio, "reported", None,
                          f"median of {ctx.scale.small_reps} pairs; the events dealt out to "
                          f"{count} engines started together: parallel uploads without a "
                          f"shared interpreter; peak memory of the {count} processes together "
                          f"{memory:.0f} MB, against {threads:.0f} MB for one process with "
                          f"workers={count}; " + _machine_note(runs, pairs),
                          extra={"processes_mb": memory, "one_process_mb": threads}))
        details[f"small_split{count}"] = runs
        details[f"small_split{count}_floor"] = pairs


def row_workers(ctx: Context) -> RowResult:
    supported, why = workers_supported()
    if not supported:
        reason = "option workers not implemented"
        ctx.say(f"    {reason} ({why})")
        return RowResult([not_available("7", "workers 1/2/4 (rows 1 and 2)", reason)],
                         {"available": False, "engine_says": why})
    lines: list[Line] = []
    details: dict[str, Any] = {"available": True}
    # Row 1 at each worker count, beside one OpenSSH put.
    size = ctx.scale.large_file
    pg, sftp = _fresh(ctx, "w_large")
    src = ctx.scratch / ctx.bench.unique("w-large-src")
    src.mkdir()
    video = src / "source.mp4"
    write_video(video, size)
    template = DocumentTemplate()
    try:
        # As below: each worker count beside OpenSSH runs of its own, the median of the pairs.
        reps = max(2, ctx.scale.small_reps)
        details["large_openssh"] = []
        for w in ctx.scale.workers:
            runs: list[dict[str, Any]] = []
            theirs: list[dict[str, Any]] = []
            for rep in range(reps):
                order = ("openssh", "uploader") if rep % 2 == 0 else ("uploader", "openssh")
                for who in order:
                    if who == "openssh":
                        theirs.append(_openssh_large(ctx, video, size, sftp, f"w{w}-{rep}"))
                    else:
                        runs.append(_large_file_round(ctx, video, size, rep, w, pg, sftp,
                                                      template))
            ratio = _median([(r["bytes"] / r["wall"]) / (o["bytes"] / o["wall"])
                             for r, o in zip(runs, theirs, strict=True)])
            rate = _median([r["bytes"] / r["wall"] / MB for r in runs])
            ssh_rate = _median([o["bytes"] / o["wall"] / MB for o in theirs])
            ctx.say(f"    workers={w}: {rate:.0f} MB/s vs {ssh_rate:.0f} MB/s ({ratio:.2f}x)")
            lines.append(Line("7", f"row 1 throughput, workers={w}", rate, ssh_rate, "MB/s",
                              ratio, ">= 1.0x OpenSSH", ratio >= 1.0,
                              f"median of {reps} pairs"))
            details[f"large_w{w}"] = runs
            details["large_openssh"].extend(theirs)
    finally:
        _cleanup(ctx, pg, sftp, src)
    n = ctx.scale.small_events
    src, ids = _small_source(ctx, n, ctx.scale.small_video)
    try:
        _workers_vs_floor(ctx, src, ids, 0.0, lines, details)
        _split_engines_vs_floor(ctx, src, ids, lines, details)
        # A device's uplink: every request that waits for its answer costs a round trip.
        _workers_vs_floor(ctx, src, ids[: ctx.scale.link_events], ctx.scale.link_rtt, lines,
                          details)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    return RowResult(lines, details)


ROWS: dict[str, tuple[str, Callable[[Context], RowResult]]] = {
    "1": ("large file vs OpenSSH sftp", row_large_file),
    "2": ("many small events vs baseline and OpenSSH batch", row_small_events),
    "3": ("backlog discovery, memory and snapshot", row_backlog),
    "4": ("memory with a very large video", row_big_video),
    "5": ("latency of events arriving live", row_latency),
    "6": ("fleet against one server pair", row_fleet),
    "7": ("parallel workers", row_workers),
}
