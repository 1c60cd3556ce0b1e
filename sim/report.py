"""What `ferry sim run` writes: result.json, report.md and the PNG plots."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sim.scenarios import SimResult, summary

MB = 1e6


def write(result: SimResult, out: Path) -> list[Path]:
    """Writes the result into `out` (created); returns the files written. Each file is
    written to a temporary name and renamed: an interrupted run leaves no half file."""
    out.mkdir(parents=True, exist_ok=True)
    files = [
        _atomic(out / "result.json", json.dumps(result.as_json(), indent=1) + "\n"),
        _atomic(out / "report.md", markdown(result)),
    ]
    files += plots(result, out)
    return files


def _atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _fmt(x: float | None, unit: str = " s") -> str:
    return "-" if x is None else f"{x:,.1f}{unit}"


def markdown(r: SimResult) -> str:
    s = summary(r)
    lines = [
        f"# ferry sim: {r.scenario}",
        "",
        f"Seed {r.params['seed']}; {s['fetchers']} fetchers; a {r.closure_bytes / MB:,.0f} MB closure of "
        f"{r.params['paths']} store paths; {r.virtual_seconds:,.0f} s simulated in {r.wall_seconds:,.1f} s of "
        f"wall time, peak memory (RSS) {r.peak_memory_mb:,.0f} MB.",
        "",
    ]
    lines += [f"- {n}" for n in r.notes]
    lines += ["", "| | ferry | central server |", "|---|---:|---:|"]
    b = r.baseline or {}
    lines += [
        f"| completed | {s['completed']} of {s['fetchers']} | {'all' if b else '-'} |",
        f"| completion p50 | {_fmt(s['p50'])} | {_fmt(b.get('p50'))} |",
        f"| completion p95 | {_fmt(s['p95'])} | {_fmt(b.get('p95'))} |",
        f"| completion max | {_fmt(s['max'])} | {_fmt(b.get('max'))} |",
        f"| source egress (closures) | {s['seed_egress_closures']:.2f} | "
        f"{b.get('server_egress_closures', '-')} |",
        f"| bad blocks received / stored | {s['bad_blocks_received']} / {s['bad_blocks_stored']} | - |",
        f"| fetchers that trusted the closure | {s['fetchers_trusting']} | - |",
    ]
    if b:
        lines += ["", f"Central server: {b['model']}."]
    lines += [
        "",
        "## Per node class",
        "",
        "| class | nodes | completed | up (MB, mean) | down (MB, mean) | "
        "bad blocks received | bad blocks stored |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for role, nodes in _by_role(r).items():
        n = len(nodes)
        lines.append(
            f"| {role} | {n} | {sum(x.completed for x in nodes)} | "
            f"{sum(x.bytes_up for x in nodes) / n / MB:,.1f} | {sum(x.bytes_down for x in nodes) / n / MB:,.1f} | "
            f"{sum(x.bad_blocks_received for x in nodes)} | {sum(x.bad_blocks_stored for x in nodes)} |"
        )
    lines += [
        "",
        "Models (not ferry's code): links (bandwidth shared first come first served per 1 MiB "
        "segment, latency, jitter, loss as retransmission delay), the DHT (lookup time from hop counts), "
        "who is connected to whom, and the central-server baseline. Chunk data is scaled: each real byte "
        f"stands for {r.params['scale']} on the links (chunks of {4096 * r.params['scale'] / (1 << 20):g} MiB "
        "as the links see them).",
        "",
    ]
    return "\n".join(lines)


def _by_role(r: SimResult) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for n in r.nodes:
        out.setdefault(n.role, []).append(n)
    return out


def plots(r: SimResult, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    s = summary(r)
    # 1. completion time CDF
    fig, ax = plt.subplots(figsize=(7, 4))
    times = sorted(
        n.completion_time for n in r.nodes if n.role == "fetcher" and n.completion_time is not None
    )
    if times:
        ax.step(
            times, [(i + 1) / s["fetchers"] for i in range(len(times))], where="post", label="ferry"
        )
    if r.baseline:
        ax.axvline(r.baseline["p50"], color="grey", linestyle="--", label="central server p50")
    ax.set_xlabel("completion time (s)")
    ax.set_ylabel("fraction of fetchers done")
    ax.set_title(f"{r.scenario}: completion time CDF")
    ax.legend()
    files.append(_save(fig, out / "completion_cdf.png"))
    # 2. bytes uploaded per node class
    fig, ax = plt.subplots(figsize=(7, 4))
    roles = _by_role(r)
    ax.bar(list(roles), [sum(x.bytes_up for x in v) / len(v) / MB for v in roles.values()])
    ax.set_ylabel("uploaded per node, mean (MB)")
    ax.set_title(f"{r.scenario}: bytes uploaded per node class")
    ax.tick_params(axis="x", labelsize=8)
    files.append(_save(fig, out / "upload_by_class.png"))
    # 3. seed egress against the number of nodes served so far
    fig, ax = plt.subplots(figsize=(7, 4))
    pts = [(t["completed"], t["seed_egress"] / r.closure_bytes) for t in r.timeline]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label="ferry")
    n = s["fetchers"]
    ax.plot(
        [0, n], [0, n], linestyle="--", color="grey", label="central server (one copy per node)"
    )
    ax.set_xlabel("nodes served so far (N)")
    ax.set_ylabel("source egress (closures)")
    ax.set_title(f"{r.scenario}: seed egress vs N")
    ax.legend()
    files.append(_save(fig, out / "seed_egress.png"))
    return files


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.stem + ".part.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
