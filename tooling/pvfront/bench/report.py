"""A report as JSON, as the terminal table and as a chart, kept under build/bench/."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvfront.bench.goals import throughput_ratio
from pvfront.bench.plan import PVF_BLK, PVF_NET, VIRTIO_BLK, VIRTIO_NET
from pvfront.bench.results import BenchReport, Cost, Throughput, median
from pvfront.image import BootPhases
from pvfront.workspace import Workspace

JSON_VERSION = 1

#: What each subject's figures are compared with: the in-tree virtio driver, same run.
BASELINES = {"blk": VIRTIO_BLK, "net": VIRTIO_NET}
OURS = {"blk": PVF_BLK, "net": PVF_NET}


@dataclass(frozen=True)
class Ratio:
    """A setup's median over the baseline's, same workload, same run (for a latency, lower is
    better: the unit says which it is)."""

    subject: str
    workload: str
    setup: str
    baseline: str
    unit: str
    ratio: float | None


def ratios(report: BenchReport) -> list[Ratio]:
    """Every throughput figure of a setup other than the baseline, as a ratio of medians to
    the baseline's in the same run (ours first); None where either is missing."""
    found = []
    for subject, baseline in BASELINES.items():
        setups = [s for s in _setups_of(report, subject) if s != baseline]
        setups.sort(key=lambda s: s != OURS[subject])
        for workload in _workloads_of(report.throughput, subject):
            for setup in setups:
                row = report.find_throughput(subject, setup, workload)
                if row is not None:
                    found.append(
                        Ratio(
                            subject,
                            workload,
                            setup,
                            baseline,
                            row.unit,
                            throughput_ratio(report, subject, setup, baseline, workload),
                        )
                    )
    return found


def to_json(report: BenchReport) -> dict[str, Any]:
    """The report as plain data, with every median and per-unit figure spelled out."""
    return {
        "version": JSON_VERSION,
        "timestamp": report.timestamp,
        "quick": report.quick,
        "seconds": round(report.seconds, 1),
        # An interrupted run keeps what it measured; `remaining` names the steps it did not.
        "complete": not report.remaining,
        "remaining": report.remaining,
        "machine": report.machine,
        "target": report.target,
        "release": report.release,
        "plan": report.plan,
        "throughput": [
            {
                "subject": t.subject,
                "setup": t.setup,
                "workload": t.workload,
                "unit": t.unit,
                "samples": t.samples,
                "median": t.median,
            }
            for t in report.throughput
        ],
        # Wall-clock figures mean little alone under TCG: compare them in the same run.
        "ratios": [dataclasses.asdict(r) for r in ratios(report)],
        "costs": [
            {
                "subject": c.subject,
                "setup": c.setup,
                "workload": c.workload,
                "unit": c.unit,
                "samples": [{**dataclasses.asdict(s), "per_unit": s.per_unit()} for s in c.samples],
                "median_per_unit": {
                    m: c.median_per_unit(m)
                    for m in ("notifications", "exits", "interrupts", "notifications+interrupts")
                },
            }
            for c in report.costs
        ],
        "toolchain": {
            **dataclasses.asdict(report.toolchain),
            "depmod_median_s": median(report.toolchain.depmod_s),
            "boot_median_s": median(report.toolchain.boot_s),
            "setup_build_median_s": median(report.toolchain.setup_build_s),
            "image_boot_median_s": median(report.toolchain.image_boot_s),
        },
        "goals": [
            {
                "name": g.name,
                "measured": g.measured,
                "limit": g.limit,
                "better": g.better,
                "unit": g.unit,
                "basis": g.basis,
                "verdict": g.verdict,
                "gap": g.gap,
            }
            for g in report.goals
        ],
        "errors": report.errors,
        "notes": report.notes,
    }


def _image_boot_phases(boots: Sequence[BootPhases]) -> list[tuple[str, list[float]]]:
    return [
        ("firmware and GRUB", [b.firmware_and_loader_s for b in boots]),
        ("kernel and initramfs", [b.kernel_and_initramfs_s for b in boots]),
        ("systemd to the shell", [b.userspace_s for b in boots]),
    ]


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _setups_of(report: BenchReport, subject: str) -> list[str]:
    seen: list[str] = []
    items: list[Throughput | Cost] = [*report.throughput, *report.costs]
    for item in items:
        if item.subject == subject and item.setup not in seen:
            seen.append(item.setup)
    return seen


def _workloads_of(items: Iterable[Throughput | Cost], subject: str) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item.subject == subject and item.workload not in seen:
            seen.append(item.workload)
    return seen


def render_table(report: BenchReport) -> str:
    """The terminal report: throughput, per-request costs, toolchain and the goals."""
    lines = [
        f"pvfront bench {'--quick ' if report.quick else ''}{report.timestamp}: "
        f"{report.target} {report.release}, {report.machine.get('qemu', '')} "
        f"({report.machine.get('accel', '')}), {report.machine.get('cpu', '')} x"
        f"{report.machine.get('cores', '')}, median of {report.plan['reps']} boot(s)",
        "",
    ]
    every_ratio = ratios(report)
    for subject, theirs in BASELINES.items():
        setups = _setups_of(report, subject)
        if not setups:
            continue
        compared = list(dict.fromkeys(r.setup for r in every_ratio if r.subject == subject))
        rows = [["throughput", "unit", *setups, *[f"{s}/{theirs}" for s in compared]]]
        for workload in _workloads_of(report.throughput, subject):
            cells = [report.find_throughput(subject, s, workload) for s in setups]
            unit = next((c.unit for c in cells if c), "")
            by_setup = {
                r.setup: r.ratio
                for r in every_ratio
                if (r.subject, r.workload) == (subject, workload)
            }
            rows.append(
                [
                    workload,
                    unit,
                    *[_fmt(c.median if c else None, 1) for c in cells],
                    *[_fmt(by_setup.get(s)) for s in compared],
                ]
            )
        lines += [*_table(rows), ""]
        rows = [["cost", "metric", *setups]]
        counted = [(c.workload, c.unit) for c in report.costs if c.subject == subject]
        for workload, unit in dict.fromkeys(counted):
            for metric in ("notifications", "exits", "interrupts"):
                costs = [report.find_cost(subject, s, workload, unit) for s in setups]
                rows.append(
                    [
                        f"{workload} per {unit}",
                        metric,
                        *[_fmt(c.median_per_unit(metric) if c else None) for c in costs],
                    ]
                )
        lines += [*_table(rows), ""]
    tools = report.toolchain
    rows = [
        ["toolchain", "seconds"],
        [
            f"symcheck full tree cold ({tools.symcheck_modules or '-'} modules)",
            _fmt(tools.symcheck_cold_s),
        ],
        ["symcheck full tree warm", _fmt(tools.symcheck_warm_s)],
        ["depmod -n -e -E (median)", _fmt(median(tools.depmod_s))],
        ["boot to first command (median)", _fmt(median(tools.boot_s))],
        ["invoke setup build, warm (median)", _fmt(median(tools.setup_build_s))],
        ["Debian guest to login shell (median)", _fmt(median(tools.image_boot_s))],
        *[
            [f"  of which {phase} (median)", _fmt(median(seconds))]
            for phase, seconds in _image_boot_phases(tools.image_boots)
            if tools.image_boots
        ],
    ]
    lines += [*_table(rows), ""]
    rows = [["goal", "measured", "limit", "verdict", "gap"]]
    for goal in report.goals:
        rows.append(
            [
                goal.name,
                _fmt(goal.measured) + goal.unit,
                ("<= " if goal.better == "lower" else ">= ") + _fmt(goal.limit) + goal.unit,
                goal.verdict,
                goal.gap,
            ]
        )
    lines += _table(rows)
    met = sum(g.verdict == "met" for g in report.goals)
    lines += [
        "",
        f"goals: {met} met, {sum(g.verdict == 'short' for g in report.goals)} short, "
        f"{sum(g.verdict == 'n/a' for g in report.goals)} not measured; "
        f"{report.seconds:.0f} s",
    ]
    lines += [f"note: {n}" for n in report.notes]
    lines += [f"error: {e}" for e in report.errors]
    return "\n".join(lines) + "\n"


def write_chart(report: BenchReport, path: Path) -> bool:
    """A bar chart of the ratio goals against their limits; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    goals = [g for g in report.goals if g.unit == "x" and g.measured is not None]
    if not goals:
        return False
    figure, axes = plt.subplots(figsize=(10, 0.35 * len(goals) + 1.5))
    names = [g.name for g in goals]
    colours = ["tab:green" if g.verdict == "met" else "tab:red" for g in goals]
    positions = range(len(goals))
    axes.barh(positions, [g.measured for g in goals], color=colours)
    axes.scatter(
        [g.limit for g in goals],
        positions,
        marker="|",
        s=300,
        color="black",
        label="goal limit",
        zorder=3,
    )
    axes.set_yticks(list(positions), names, fontsize=7)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("ratio (log scale); green met, red short")
    axes.set_title(
        f"pvfront bench {report.timestamp} ({report.target}, {report.machine.get('accel', '')})"
    )
    axes.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


@dataclass(frozen=True)
class Outputs:
    json: Path
    latest: Path
    chart: Path | None


def write_json(ws: Workspace, report: BenchReport) -> Path:
    """build/bench/bench-<timestamp>.json."""
    directory = ws.build_dir / "bench"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bench-{report.timestamp}.json"
    path.write_text(json.dumps(to_json(report), indent=1) + "\n")
    return path


def write_outputs(ws: Workspace, report: BenchReport) -> Outputs:
    """build/bench/bench-<timestamp>.json, latest.json, and the chart beside them."""
    path = write_json(ws, report)
    directory = path.parent
    latest = directory / "latest.json"
    shutil.copyfile(path, latest)
    chart = directory / f"bench-{report.timestamp}.png"
    if write_chart(report, chart):
        shutil.copyfile(chart, directory / "latest.png")
        return Outputs(path, latest, chart)
    return Outputs(path, latest, None)
