"""The paper's Table 3/4/5 layout for our models, and the plots that go with it.

Æ (accuracy·efficiency, paper §4.3, from REVAMP2T) = AP × FPS / W. The power W is never
measured here: it is whatever the caller states (default: the paper's 15 W for the Jetson NX),
and every table says which figure was used.
"""

from __future__ import annotations

from pathlib import Path

from keras_ehrnet.fileio import atomic_path
from keras_ehrnet.models.scaling import PAPER_FACTS

# Bottom-up methods of the paper's Table 4 (COCO val, single scale): AP, GFLOPs (multiply-adds), FPS on NX.
PAPER_PEERS: dict[str, dict[str, float | None]] = {
    "PersonLab": {"ap": 66.5, "gflops": 405.5, "fps": None},
    "HRNet": {"ap": 64.4, "gflops": 38.9, "fps": None},
    "HigherHRNet": {"ap": 67.1, "gflops": 47.9, "fps": 6.68},
    "Lightweight OpenPose": {"ap": 42.8, "gflops": 9.0, "fps": 26.0},
}
PAPER_WATTS = 15.0  # Jetson NX Xavier maximum power, the paper's Table 5


def ae_score(ap: float | None, fps: float | None, watts: float) -> float | None:
    """Æ = AP (in %) × FPS / W."""
    if ap is None or fps is None or watts <= 0:
        return None
    return ap * fps / watts


def report_rows(levels: list[dict], latency: dict, watts: float) -> list[dict]:
    """Merge sizes, AP and per-runtime FPS into one row per level.

    `levels`: dicts with level, input_size, params, gmacs and optionally ap (0–100).
    `latency`: {level: {runtime: median_ms or None (skipped)}}.
    """
    rows = []
    for item in levels:
        level = item["level"]
        paper = PAPER_FACTS.get(level, {})
        fps = {
            runtime: (round(1000.0 / ms, 2) if ms else None) for runtime, ms in latency.get(level, {}).items()
        }
        best = max((v for v in fps.values() if v), default=None)
        best_runtime = next((k for k, v in fps.items() if v == best), None) if best else None
        row = {
            **item,
            "paper_ap": paper.get("ap_val"),
            "paper_params_m": paper.get("params_m"),
            "paper_gflops": paper.get("gflops"),
            "paper_fps_nx": paper.get("fps_nx"),
            "fps": fps,
            "best_runtime": best_runtime,
            "best_fps": best,
            "watts": watts,
            "efficiency": round(best / watts, 3) if best else None,
            "ae": _round(ae_score(item.get("ap"), best, watts)),
            "paper_ae": _round(ae_score(paper.get("ap_val"), paper.get("fps_nx"), PAPER_WATTS)),
        }
        rows.append(row)
    return rows


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def report_markdown(rows: list[dict], runtimes: list[str], watts: float, machine: str) -> str:
    """Tables 3/4 (size, GMACs, AP, FPS per runtime) and Table 5 (efficiency, Æ)."""
    fmt = lambda v, spec="": "–" if v is None else format(v, spec)  # noqa: E731
    lines = [
        f"Measured on {machine}; FPS = 1000 / median batch-1 latency; power {watts:g} W "
        "(stated, not measured) for efficiency and Æ = AP × FPS / W.",
        "",
        "| level | input | params | GMACs | AP (ours) | AP (paper, val) | "
        + " | ".join(f"FPS {r}" for r in runtimes)
        + " | paper FPS (NX) |",
        "|---|---|---|---|---|---|" + "---|" * len(runtimes) + "---|",
    ]
    for r in rows:
        fps_cells = " | ".join(fmt(r["fps"].get(rt), ".1f") for rt in runtimes)
        lines.append(
            f"| {r['level']} | {r['input_size']} | {r['params'] / 1e6:.2f} M | {r['gmacs']:.2f} | "
            f"{fmt(r.get('ap'), '.1f')} | {fmt(r['paper_ap'])} | {fps_cells} | {fmt(r['paper_fps_nx'])} |"
        )
    lines += [
        "",
        "| level | AP (ours) | best runtime | FPS | efficiency (FPS/W) | Æ (ours) | Æ (paper, NX 15 W) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['level']} | {fmt(r.get('ap'), '.1f')} | {fmt(r['best_runtime'])} | {fmt(r['best_fps'], '.1f')} | "
            f"{fmt(r['efficiency'], '.3f')} | {fmt(r['ae'])} | {fmt(r['paper_ae'])} |"
        )
    if all(r.get("ap") is None for r in rows):
        lines += ["", "AP (ours) needs trained or imported weights (`--models`); Æ is left out without it."]
    return "\n".join(lines)


def plot_ap_vs_gmacs(rows: list[dict], path: str | Path) -> Path:
    """Fig. 1 of the paper: AP against multiply-adds (log scale), paper points and ours."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, p in PAPER_PEERS.items():
        ax.scatter(p["gflops"], p["ap"], marker="s", color="grey")
        ax.annotate(name, (p["gflops"], p["ap"]), textcoords="offset points", xytext=(5, -10), fontsize=8)
    xs = [PAPER_FACTS[r["level"]]["gflops"] for r in rows if r["level"] in PAPER_FACTS]
    ys = [PAPER_FACTS[r["level"]]["ap_val"] for r in rows if r["level"] in PAPER_FACTS]
    ax.plot(xs, ys, "o-", color="tab:blue", label="EfficientHRNet, paper (its GFLOPs)")
    ours = [r for r in rows if r["level"] in PAPER_FACTS]
    measured = [r for r in ours if r.get("ap") is not None]
    ax.plot(
        [r["gmacs"] for r in ours],
        [PAPER_FACTS[r["level"]]["ap_val"] for r in ours],
        "o--",
        mfc="none",
        color="tab:orange",
        label="keras-ehrnet GMACs at the paper's AP" + ("" if measured else " (AP not measured here)"),
    )
    if measured:
        ax.plot(
            [r["gmacs"] for r in measured],
            [r["ap"] for r in measured],
            "D",
            color="tab:red",
            label="keras-ehrnet, measured AP",
        )
    for r in ours:
        ax.annotate(
            r["level"],
            (r["gmacs"], PAPER_FACTS[r["level"]]["ap_val"]),
            textcoords="offset points",
            xytext=(-14, 6),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("GMACs (log scale; the paper calls them GFLOPs)")
    ax.set_ylabel("COCO val AP")
    ax.set_title("Accuracy against computation (bottom-up methods)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def plot_latency(latency: dict, path: str | Path, machine: str = "") -> Path:
    """Grouped bars: median batch-1 latency per runtime for each level (log scale)."""
    plt = pyplot()
    levels = list(latency)
    runtimes = sorted({rt for per in latency.values() for rt, ms in per.items() if ms})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(runtimes) * len(levels) / 2), 4.5), dpi=120)
    width = 0.8 / max(1, len(runtimes))
    for k, rt in enumerate(runtimes):
        xs = [i + k * width for i in range(len(levels))]
        ys = [latency[lv].get(rt) or 0 for lv in levels]
        ax.bar(xs, ys, width, label=rt)
    ax.set_xticks([i + width * (len(runtimes) - 1) / 2 for i in range(len(levels))], levels)
    ax.set_yscale("log")
    ax.set_ylabel("median latency, batch 1 (ms, log scale)")
    ax.set_title(f"Latency per runtime{f' — {machine}' if machine else ''}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def pyplot():
    """matplotlib.pyplot on the Agg backend: plots are written to files, never shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: float | None = None) -> Path:
    """Lay out `fig`, write it to `path` (folders made as needed) and free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi or "figure", format=path.suffix.lstrip(".") or None)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
