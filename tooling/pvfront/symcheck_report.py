"""Symcheck results for people (grouped per module), for programs (JSON) and for CI (JUnit,
KCIDB)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from pvfront import architectures, kcidb
from pvfront.symcheck import Finding, Report, Verdict

MAX_ERRORS_SHOWN = 5


def finding_json(finding: Finding) -> dict:
    return {
        "check": finding.check,
        "severity": finding.severity,
        "message": finding.message,
        "detail": finding.detail,
        "symbol": finding.symbol,
        "errno": finding.errno,
        "strerror": finding.errno_text,
    }


def verdict_json(verdict: Verdict) -> dict:
    first = verdict.first_error
    return {
        "module": verdict.module,
        "path": verdict.path,
        "loads": verdict.loads,
        "first_error": finding_json(first) if first else None,
        "kernel_message": verdict.kernel_message,
        "dependencies": verdict.dependencies,
        "providers": verdict.providers,
        "findings": [
            finding_json(f) for f in sorted(verdict.findings, key=lambda f: (f.stage, f.index))
        ],
    }


def report_json(report: Report) -> dict:
    kernel = report.kernel
    graph = report.graph
    return {
        "kernel": kernel.label,
        "release": kernel.release,
        "source": kernel.source,
        "vermagic": kernel.vermagic,
        "ok": report.ok,
        "notes": report.notes,
        "modules": [verdict_json(v) for v in report.verdicts],
        "load_order": graph.order([v.module for v in report.verdicts]),
        "intree_dependencies": sorted(report.intree),
        "cycles": graph.cycles(),
    }


def to_json(reports: Sequence[Report]) -> str:
    return (
        json.dumps(
            {"ok": all(r.ok for r in reports), "reports": [report_json(r) for r in reports]},
            indent=2,
        )
        + "\n"
    )


def human(reports: Sequence[Report]) -> str:
    lines: list[str] = []
    for report in reports:
        kernel = report.kernel
        lines.append(f"{kernel.label}: {kernel.source}")
        lines.extend(f"  note: {note}" for note in report.notes)
        width = max((len(v.module) for v in report.verdicts), default=0)
        for verdict in report.verdicts:
            needs = verdict.dependencies
            suffix = f"  (needs {', '.join(needs)})" if needs else ""
            if verdict.loads:
                lines.append(f"  {verdict.module:<{width}}  loads{suffix}")
            else:
                lines.append(f"  {verdict.module:<{width}}  FAILS: {verdict.reason}")
                errors = verdict.errors
                for finding in errors[1 : MAX_ERRORS_SHOWN + 1]:
                    lines.append(f"  {'':<{width}}    then: {finding.summary}")
                if len(errors) > MAX_ERRORS_SHOWN + 1:
                    lines.append(
                        f"  {'':<{width}}    ... and {len(errors) - MAX_ERRORS_SHOWN - 1}"
                        " more errors (--json lists all)"
                    )
            for finding in verdict.warnings:
                lines.append(f"  {'':<{width}}    warning: {finding.summary}")
        if len(report.verdicts) > 1 and report.ok:
            order = report.graph.order([v.module for v in report.verdicts])
            lines.append(f"  load order: {' '.join(order)}")
    return "\n".join(lines) + "\n"


def write_junit(reports: Sequence[Report], path: Path) -> None:
    """One testsuite per kernel, one testcase per module; a failing module is a failure whose
    message is the kernel's first complaint."""
    suites = ElementTree.Element("testsuites", name="pvfront symcheck")
    for report in reports:
        failures = sum(not v.loads for v in report.verdicts)
        suite = ElementTree.SubElement(
            suites,
            "testsuite",
            name=f"symcheck {report.kernel.label}",
            tests=str(len(report.verdicts)),
            failures=str(failures),
        )
        for verdict in report.verdicts:
            case = ElementTree.SubElement(
                suite,
                "testcase",
                classname=report.kernel.label,
                name=verdict.module,
                file=verdict.path,
            )
            first_error = verdict.first_error  # None exactly when the module loads
            if first_error is not None:
                failure = ElementTree.SubElement(
                    case, "failure", message=verdict.reason, type=first_error.check
                )
                failure.text = "\n".join(f.summary for f in verdict.errors)
    path.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def to_kcidb(reports: Sequence[Report], checkout: kcidb.Checkout) -> kcidb.Report:
    """One build per kernel, one test per module (`pvfront.symcheck.<module>`): PASS when it
    would load, FAIL with the kernel's complaints when it would not."""
    started = time.time()
    run_id = kcidb.run_id(started)
    tests = []
    for report in reports:
        arch = architectures.for_elf_machine(report.kernel.machine or 0)
        kbuild_arch = arch.kbuild_arch if arch else None
        build = kcidb.Build(checkout, report.kernel.label, report.kernel.release, kbuild_arch)
        for verdict in report.verdicts:
            run = kcidb.TestRun(
                run_id=run_id,
                name=f"symcheck:{report.kernel.label}:{verdict.module}",
                path=kcidb.kcidb_path("symcheck", verdict.module),
                build=build,
                start=started,
                statuses=["PASS" if verdict.loads else "FAIL"],
                log_excerpt="\n".join(f.summary for f in verdict.errors),
            )
            tests.append(run)
    return kcidb.Report(checkout, tests)


# --- the matrix ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixCell:
    built_for: str
    checked_against: str
    loads: bool
    reason: str  # "loads", the first failing module's first error, or why nothing was checked


def matrix_cell(
    built_for: str, against: str, report: Report | None, missing: str = ""
) -> MatrixCell:
    if report is None:
        return MatrixCell(built_for, against, False, missing or "not built")
    for verdict in report.verdicts:
        if not verdict.loads:
            return MatrixCell(built_for, against, False, verdict.reason)
    return MatrixCell(built_for, against, True, "loads")


def matrix_table(cells: Sequence[MatrixCell], built: Sequence[str], kernels: Sequence[str]) -> str:
    """Rows: what the modules were built for; columns would be too wide, so each row lists
    its verdict per kernel on its own line."""
    lines = []
    by_key = {(c.built_for, c.checked_against): c for c in cells}
    width = max(len(k) for k in kernels)
    for row in built:
        lines.append(f"built for {row}:")
        for column in kernels:
            cell = by_key[(row, column)]
            verdict = "loads" if cell.loads else f"fails: {cell.reason}"
            lines.append(f"  on {column:<{width}}  {verdict}")
    return "\n".join(lines) + "\n"


def matrix_json(cells: Sequence[MatrixCell]) -> str:
    return (
        json.dumps(
            [
                {
                    "built_for": c.built_for,
                    "checked_against": c.checked_against,
                    "loads": c.loads,
                    "reason": c.reason,
                }
                for c in cells
            ],
            indent=2,
        )
        + "\n"
    )
