"""``report.html``: one self-contained page summarising a ``nuclei segment`` run.

No network and no external files are needed to view it: the histograms (nucleus areas, and each
measured channel's nucleus means with its thresholds) are inline SVG and the
overlay thumbnails are base64 PNGs. Each thumbnail links to the full-size overlay next to
the page (``overlays/<stem>.png``). The table of images fits a laptop screen: each row leads with
the name (shortened in the middle, linked to its overlay thumbnail), the count, the median area and
the flag (clamped to two lines; a click unfolds it), the failed and flagged images first; the other ``counts.csv`` fields fold into a
``<details>`` per row. Plain HTML and CSS: no script.

Must not: read or write files (it returns the HTML text).
"""

from __future__ import annotations

import base64
import io
from html import escape

import numpy as np
import pandas as pd

from pipeline.batch.outlines import FORMATS, export_path
from pipeline.batch.output_folder import COUNTS_CSV, NUCLEI_CSV, labels_file, overlay_file

#: Flags for viewing a report in headless Chromium with no network traffic and no GPU (add
#: ``--user-data-dir=<a fresh folder>`` and the action: ``--dump-dom``, ``--screenshot=...``).
HEADLESS_CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
.summary span { display: inline-block; margin-right: 2em; }
.summary b { font-size: 1.3em; }
ul.muted { overflow-wrap: anywhere; }
.warn { color: #b35900; font-weight: 600; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.name { white-space: nowrap; }
tr.failed td { background: #fdecea; color: #8a1f11; }
details.clamp summary { display: -webkit-box; -webkit-box-orient: vertical; -webkit-line-clamp: 2;
  overflow: hidden; cursor: pointer; max-width: 40em; overflow-wrap: anywhere; }
details.clamp summary::-webkit-details-marker { display: none; }
details.clamp[open] summary { display: block; }
details.more summary { cursor: pointer; color: #555; white-space: nowrap; }
details.more dl { display: grid; grid-template-columns: auto auto; gap: 0 1em; margin: 0.3em 0;
  max-width: 30em; overflow-wrap: anywhere; }
details.more dt { color: #777; overflow-wrap: normal; white-space: nowrap; } details.more dd { margin: 0; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; text-align: center; font-size: 0.85em; max-width: 320px; overflow-wrap: anywhere; }
figure img { display: block; border: 1px solid #ccc; image-rendering: auto; }
figcaption details.clamp summary { max-width: none; }
.muted { color: #777; }
"""


def area_histogram_svg(areas: np.ndarray, unit: str) -> str:
    """Draw the histogram of nucleus areas.

    Parameters
    ----------
    areas : (N,) float array
        Nucleus areas, in ``unit``.
    unit : str
        Axis label unit, e.g. ``'px'`` or ``'µm²'``.

    Returns
    -------
    svg : str
        An ``<svg>`` element (no XML prolog) to inline in HTML.
    """
    from matplotlib.figure import Figure  # matplotlib is slow to import: only when drawing

    figure = Figure(figsize=(6.4, 2.8))
    axes = figure.add_subplot()
    axes.hist(areas, bins=np.histogram_bin_edges(areas, bins="auto")[:101], color="#1f77b4")
    axes.set_xlabel(f"nucleus area ({unit})")
    axes.set_ylabel("nuclei")
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    buffer = io.StringIO()
    no_metadata = dict.fromkeys(("Date", "Creator", "Format", "Type"))  # reproducible, no RDF block
    figure.savefig(buffer, format="svg", metadata=no_metadata)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def channel_histogram_svg(means: np.ndarray, thresholds: np.ndarray | None, key: str) -> str:
    """Draw the histogram of one channel's nucleus means, with its thresholds when it was called.

    Parameters
    ----------
    means : (N,) float array
        ``mean_<key>`` of the nuclei, in the file's units.
    thresholds : (M,) float array, or None
        The thresholds used (one per image; NaN where none was set), drawn as vertical lines; None
        for a channel not given to ``--positive`` (no line, no word of thresholds).
    key : str
        The channel's column key.

    Returns
    -------
    svg : str
        An ``<svg>`` element. The x axis is logarithmic when the means are positive and span more than
        a decade (marker levels are log-normal).
    """
    from matplotlib.figure import Figure

    means = np.asarray(means, float)
    means = means[np.isfinite(means)]
    figure = Figure(figsize=(6.4, 2.6))
    axes = figure.add_subplot()
    positive = means.size and means.min() > 0 and means.max() > 10 * means.min()
    bins = (np.geomspace(means.min(), means.max(), 80) if positive
            else np.histogram_bin_edges(means, bins="auto")[:101] if means.size else 10)
    axes.hist(means, bins=bins, color="#7f7f7f")
    if positive:
        axes.set_xscale("log")
    thresholds = np.zeros(0) if thresholds is None else np.asarray(thresholds, float)
    shown = np.unique(np.round(thresholds[np.isfinite(thresholds)], 6))
    for value in shown[:50]:
        axes.axvline(value, color="#d62728", linewidth=1.2 if shown.size == 1 else 0.6)
    text = (f": threshold {shown[0]:.4g}" if shown.size == 1 else f": {shown.size} thresholds (one per image)"
            if shown.size else ": no threshold set" if thresholds.size else "")
    axes.set_title(f"{key}{text}", fontsize=9, loc="left")
    axes.set_xlabel(f"nucleus mean of {key} (file's units)")
    axes.set_ylabel("nuclei")
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata=dict.fromkeys(("Date", "Creator", "Format", "Type")))
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def _channels(counts: pd.DataFrame, channels: dict[str, np.ndarray]) -> str:
    """The section of the measured channels: per channel its histogram of nucleus means, and for the
    --positive channels (a ``threshold_<key>`` column) the thresholds and the fraction positive."""
    parts = []
    for key, means in channels.items():
        called = f"threshold_{key}" in counts
        n = counts.get(f"n_positive_{key}")
        total = counts.loc[n.notna(), "count"].sum() if n is not None else 0
        fraction = f"{n.sum() / total:.1%} positive ({int(n.sum())} of {int(total)} nuclei called)" if total else ""
        thresholds = counts[f"threshold_{key}"].to_numpy(float) if called else None
        parts.append(f'<h3 id="channel-{escape(key)}">{escape(key)}</h3>'
                     + (f"<p>{escape(fraction)}</p>" if fraction else "")
                     + channel_histogram_svg(means, thresholds, key))
    return f"<h2>Channels</h2>{''.join(parts)}" if parts else ""


def short_name(name: str, width: int = 36) -> str:
    """``name`` shortened in the middle to at most ``width`` characters ('very_long_pre…_suffix.tif'):
    its start and its end (plane, series, file ending) stay."""
    if len(name) <= width:
        return name
    tail = (width - 1) // 2
    return f"{name[: width - 1 - tail]}…{name[len(name) - tail :]}"


def _text(value: object, decimals: int | None = None) -> str:
    """A table value as text: '' for NA; a float with ``decimals``, else as a whole number when it
    is one or is 10⁴ or more, else with 4 significant digits; anything else as it is."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        whole = float(value).is_integer() or abs(value) >= 1e4
        return f"{value:.{decimals}f}" if decimals is not None else f"{value:.0f}" if whole else f"{value:.4g}"
    return str(value)


def _clamped(text: str, warn: bool = True) -> str:
    """``text`` clamped to two lines (in the warning colour when ``warn``); a click, or its tooltip,
    shows it all."""
    css = ' class="warn"' if warn else ""
    return (f'<details class="clamp"><summary title="{escape(text)}"{css}>{escape(text)}</summary></details>'
            if text else "")


def _median_column(counts: pd.DataFrame) -> str:
    """The median nucleus size shown up front: in µm² when the run has it, else in px."""
    um2 = "median_area_um2" in counts and counts["median_area_um2"].notna().any()
    return "median_area_um2" if um2 else "median_area_px"


def flagged_first(counts: pd.DataFrame) -> pd.DataFrame:
    """``counts`` with the images that failed first, then the flagged ones (a non-empty ``flag``),
    then the rest, each group in its own order (a stable sort): the rows to check lead the page."""
    failed = (counts["status"] != "ok").to_numpy() if "status" in counts else np.zeros(len(counts), bool)
    flag = counts["flag"] if "flag" in counts else pd.Series("", index=counts.index)
    flagged = flag.astype(object).fillna("").astype(str).str.len().to_numpy() > 0
    rank = np.where(failed, 0, np.where(flagged, 1, 2))
    return counts.iloc[np.argsort(rank, kind="stable")]


def _counts_table(counts: pd.DataFrame, anchors: dict[str, str]) -> str:
    """The table of images: name, count, median area and flag (or error) first; every other
    ``counts.csv`` field (but the source and the files) folded into a "more" cell per row."""
    median = _median_column(counts)
    lead = ("image", "count", median, "flag", "status", "error")
    rest = [c for c in counts.columns if c not in lead and c != "source" and not c.endswith("_file")]
    head = f"<th>image</th><th>count</th><th>{escape(median)}</th><th>flag</th><th></th>"
    rows = []
    for record in counts.to_dict("records"):
        failed = record.get("status") != "ok"
        name = str(record["image"])
        shown = escape(short_name(name))
        if name in anchors:
            shown = f'<a href="#{anchors[name]}">{shown}</a>'
        said = [": ".join(filter(None, (_text(record.get("status")), _text(record.get("error")))))] if failed else []
        note = "; ".join(filter(None, (*said, _text(record.get("flag")))))
        fields = [(c, _text(record[c])) for c in rest]
        more = "".join(f"<dt>{escape(c)}</dt><dd>{escape(v)}</dd>" for c, v in fields if v)
        more = f'<details class="more"><summary>more</summary><dl>{more}</dl></details>' if more else ""
        css = ' class="failed"' if failed else ""
        rows.append(
            f'<tr{css}><td class="name" title="{escape(name)}">{shown}</td>'
            f'<td class="num">{_text(record.get("count"), 0)}</td>'
            f'<td class="num">{_text(record.get(median), 1)}</td>'
            f'<td class="flag">{_clamped(note, warn=not failed)}</td>'
            f"<td>{more}</td></tr>"
        )
    return f'<table id="counts"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _gallery(counts: pd.DataFrame, thumbnails: dict[str, bytes]) -> tuple[str, dict[str, str]]:
    """The overlay thumbnails, and the id of each image's figure (by name) for the table's links."""
    figures, anchors = [], {}
    for record in counts.to_dict("records"):
        png = thumbnails.get(record["image"])
        if png is None or record["image"] in anchors:  # a time-lapse: one overlay for its rows (frames)
            continue
        anchors[record["image"]] = anchor = f"overlay-{len(anchors)}"
        name = escape(str(record["image"]))
        data = base64.b64encode(png).decode("ascii")
        extra = ""
        if pd.notna(record.get("diameter_px")):
            how = "estimated" if record.get("diameter_estimated") else "given"
            extra += f" · diameter {float(record['diameter_px']):.1f} px ({how})"
        if isinstance(record.get("flag"), str) and record["flag"]:
            extra += _clamped(record["flag"])
        figures.append(
            f'<figure id="{anchor}"><a href="{escape(overlay_file(str(record["image"])))}"><img alt="{name}" '
            f'src="data:image/png;base64,{data}"></a>'
            f'<figcaption><span title="{name}">{escape(short_name(str(record["image"])))}</span>'
            f" · nuclei: {int(record['count'])}{extra}</figcaption></figure>"
        )
    if not figures:
        return '<p class="muted">No overlays.</p>', anchors
    return f'<div class="gallery">{"".join(figures)}</div>', anchors


def render_report(
    counts: pd.DataFrame,
    areas: np.ndarray,
    thumbnails: dict[str, bytes],
    *,
    pixel_size: float | None = None,
    info: dict[str, str] | None = None,
    channels: dict[str, np.ndarray] | None = None,
) -> str:
    """Render the run's report as one HTML page.

    Parameters
    ----------
    counts : pandas.DataFrame
        ``counts.csv``: one row per image, with at least ``image``, ``count`` and ``status``.
    areas : (N,) float array
        Areas of all nuclei of the run, in µm² when ``pixel_size`` is given, else in pixels.
    thumbnails : dict of str to bytes
        PNG overlay thumbnail per image name (``counts.image``).
    pixel_size : float, optional
        Pixel side in µm (only shown, and used for the histogram's unit).
    info : dict of str to str, optional
        Extra facts listed under the title (model, device, date, ...).
    channels : dict of str to (N,) float array, optional
        The nucleus means of each measured channel (its key): a histogram each, with the
        ``threshold_<key>`` of ``counts`` for the ``--positive`` channels.

    Returns
    -------
    html : str
        A complete, self-contained HTML document.
    """
    counts = flagged_first(counts)
    ok = counts["status"] == "ok"
    n_nuclei = int(counts.loc[ok, "count"].sum())
    n_flagged = int((ok & counts.get("flag", pd.Series("", index=counts.index)).astype(object).fillna("").astype(str).ne("")).sum())
    summary = (
        f'<span>images <b id="n-images">{int(ok.sum())}</b></span>'
        f'<span>nuclei <b id="n-nuclei">{n_nuclei}</b></span>'
        f'<span>flagged <b id="n-flagged">{n_flagged}</b></span>'
        f'<span>failed <b id="n-failed">{int((~ok).sum())}</b></span>'
    )
    facts = dict(info or {})
    if pixel_size is not None:
        facts["pixel size"] = f"{pixel_size:g} µm"
    facts["files next to this page"] = ", ".join([
        f"{COUNTS_CSV} (per image), {NUCLEI_CSV} (per nucleus), {labels_file('<image>')}, {overlay_file('<image>')}",
        *(f"{export_path(fmt, '<image>')} ({f.reader})" for fmt, f in FORMATS.items()
          if f.column in counts and counts[f.column].notna().any()),
    ])  # fmt: skip
    facts_html = "".join(f"<li>{escape(key)}: {escape(str(value))}</li>" for key, value in facts.items())
    unit = "µm²" if pixel_size is not None else "px"
    histogram = (
        area_histogram_svg(np.asarray(areas, dtype=float), unit)
        if len(areas)
        else '<p class="muted">No nuclei found.</p>'
    )
    gallery, anchors = _gallery(counts, thumbnails)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Nucleus segmentation report</title>
<style>{_CSS}</style>
</head>
<body>
<h1>Nucleus segmentation report</h1>
<p class="summary">{summary}</p>
<ul class="muted">{facts_html}</ul>
<h2>Counts per image</h2>
{_counts_table(counts, anchors)}
<h2>Nucleus areas</h2>
{histogram}
{_channels(counts, channels or {})}
<h2>Overlays</h2>
{gallery}
</body>
</html>
"""
