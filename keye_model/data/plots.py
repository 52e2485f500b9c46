"""Curation statistics as matplotlib figures (Agg, no pyplot state) for MLflow."""

from __future__ import annotations

from typing import Any


def stats_figures(manifest: dict) -> dict[str, Any]:
    """Rejection reasons, target vs achieved category shares, and the image side histogram."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figures = {}

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    reasons = manifest["rejected_by_reason"]
    ax.barh(list(reasons) or ["(none)"], list(reasons.values()) or [0], color="#c0504d")
    ax.set_xlabel("rejected samples")
    ax.set_title(f"Rejections: {manifest['counts']['rejected']} of {manifest['counts']['input']}")
    fig.tight_layout()
    figures["rejection_reasons"] = fig

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    mix = manifest["mixture"]
    cats = sorted(set(mix["target_share"]) | set(mix["achieved_share"]))
    xs = range(len(cats))
    ax.bar(
        [x - 0.2 for x in xs],
        [mix["target_share"].get(c, 0) for c in cats],
        width=0.4,
        label="target",
    )
    ax.bar(
        [x + 0.2 for x in xs],
        [mix["achieved_share"].get(c, 0) for c in cats],
        width=0.4,
        label="achieved",
    )
    ax.set_xticks(list(xs), cats, rotation=30)
    ax.set_ylabel("token share")
    ax.legend()
    ax.set_title("Category mixture")
    fig.tight_layout()
    figures["category_shares"] = fig

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    hist = manifest["image_side_histogram"]
    bins = hist["bins"]
    ax.bar(
        bins[:-1],
        hist["counts"],
        width=[b - a for a, b in zip(bins, bins[1:])],
        align="edge",
        color="#4f81bd",
    )
    ax.set_xscale("log")
    ax.set_xlabel("longest image side (px, after filtering and dedup)")
    ax.set_ylabel("images")
    ax.set_title("Image sizes")
    fig.tight_layout()
    figures["image_sizes"] = fig
    return figures
