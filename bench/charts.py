"""Charts as standalone SVG (no plotting library needed)."""
from __future__ import annotations

import math


def curve_svg(series: dict[str, list[tuple[int, float, float]]], lines: dict[str, float], title: str,
              subtitle: str = "") -> str:
    """Accuracy against step as standalone SVG: each series a line with its +-1 standard-error band,
    each of ``lines`` a dashed horizontal line."""
    W, H, L, B, T, R = 560, 340, 56, 46, 56, 170
    pts = [p for s in series.values() for p in s]
    top = min(1.0, math.ceil((max([m + e for _, m, e in pts] + list(lines.values()) + [0.1]) + 0.05) * 10) / 10)
    x_max = max((p for p, _, _ in pts), default=1) or 1
    x = lambda step: L + step / x_max * (W - L - R)  # noqa: E731
    y = lambda v: H - B - v / top * (H - B - T)  # noqa: E731
    colours = {"GRPO": "#1f77b4", "SFT": "#ff7f0e"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>', f'<text x="{L}" y="20" font-size="14">{title}</text>',
           f'<text x="{L}" y="38" fill="#555">{subtitle}</text>',
           f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
           f'<text x="{(L + W - R) / 2}" y="{H - 10}" text-anchor="middle">training step</text>',
           f'<text x="14" y="{(T + H - B) / 2}" transform="rotate(-90 14 {(T + H - B) / 2})" '
           'text-anchor="middle">accuracy (IoU &gt; 0.5)</text>']
    for p in sorted({p for p, _, _ in pts}):
        out.append(f'<text x="{x(p):.1f}" y="{H - B + 16}" text-anchor="middle">{p}</text>')
    for k in range(6):
        v = top * k / 5
        out.append(f'<text x="{L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
        out.append(f'<line x1="{L}" y1="{y(v):.1f}" x2="{W - R}" y2="{y(v):.1f}" stroke="#e4e4e4"/>')
    j = 0
    for name, s in series.items():
        c = colours.get(name, "#2ca02c")
        band = [(x(p), y(m + e)) for p, m, e in s] + [(x(p), y(m - e)) for p, m, e in reversed(s)]
        out.append(f'<polygon points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in band)}" fill="{c}" fill-opacity="0.18"/>')
        out.append(f'<polyline points="{" ".join(f"{x(p):.1f},{y(m):.1f}" for p, m, _ in s)}" fill="none" '
                   f'stroke="{c}" stroke-width="2"/>')
        out.append(f'<line x1="{W - R + 10}" y1="{T + 18 * j}" x2="{W - R + 34}" y2="{T + 18 * j}" stroke="{c}" '
                   f'stroke-width="2"/><text x="{W - R + 40}" y="{T + 18 * j + 4}">{name} (± 1 SE)</text>')
        j += 1
    for (name, v), c in zip(lines.items(), ("#555", "#d62728")):
        out.append(f'<line x1="{L}" y1="{y(v):.1f}" x2="{W - R}" y2="{y(v):.1f}" stroke="{c}" stroke-dasharray="5,4"/>')
        out.append(f'<line x1="{W - R + 10}" y1="{T + 18 * j}" x2="{W - R + 34}" y2="{T + 18 * j}" stroke="{c}" '
                   f'stroke-dasharray="5,4"/><text x="{W - R + 40}" y="{T + 18 * j + 4}">{name}</text>')
        j += 1
    return "\n".join(out + ["</svg>"]) + "\n"
