"""Run an exported job with the real engine, lava-dispatcher's `lava-run`, and read its results.

lava-run logs one JSON (YAML flow) object per line on stdout; the `results` ones are LAVA's
test cases: the dispatcher's own actions under definition `lava`, each check of an
interactive test under `<stage>_<test name>`. Its output directory keeps only the job's
overall result, so the cases come from the log.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pvfront.errors import SetupError

LAVA_RUN = "lava-run"
LAVA_DEFINITION = "lava"  # the definition name of the dispatcher's own actions
# lava-run's QEMU runs under a pty in a session of its own, out of reach of a process-group
# kill: every process lava-run starts inherits this variable, which finds them.
_RUN_TOKEN = "PVFRONT_LAVA_RUN_TOKEN"
_TERM_GRACE_S = 10.0
# Where lava-run keeps a job's downloads; --validate leaves its empty directories behind.
DISPATCHER_TMP = Path("/var/lib/lava/dispatcher/tmp")


@dataclass(frozen=True)
class CaseResult:
    definition: str
    case: str
    result: str  # pass | fail | skip | unknown


@dataclass(frozen=True)
class RunOutcome:
    """What lava-run reported for one job."""

    job_result: str  # LAVA's `job` case: pass when the job ran to its end
    error: str | None  # the job's error_msg when it did not
    cases: tuple[CaseResult, ...]  # the tests' cases (not the dispatcher's actions)
    seconds: float  # the whole lava-run process, wall clock
    log: Path

    def failed_cases(self) -> list[str]:
        return [c.case for c in self.cases if c.result != "pass"]

    @property
    def passed(self) -> bool:
        """The job ran to its end and every check passed (LAVA calls a job whose checks
        fail complete: its test cases carry the failures)."""
        return self.job_result == "pass" and bool(self.cases) and not self.failed_cases()


def parse_log(text: str) -> tuple[str, str | None, tuple[CaseResult, ...]]:
    """The job's result, its error and the test cases, from lava-run's log lines."""
    job_result, error, cases = "unknown", None, []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # lava-run's own tracebacks and warnings are not log entries
        if not isinstance(entry, dict) or entry.get("lvl") != "results":
            continue
        result = entry.get("msg")
        if not isinstance(result, dict):
            continue
        definition, case = str(result.get("definition")), str(result.get("case"))
        if definition == LAVA_DEFINITION:
            if case == "job":
                job_result = str(result.get("result"))
                error = result.get("error_msg")
            continue
        cases.append(CaseResult(definition, case, str(result.get("result"))))
    return job_result, error, tuple(cases)


def _kill_leftovers(token: str) -> None:
    """SIGKILL every process still carrying this run's token (QEMU, above all)."""
    needle = f"{_RUN_TOKEN}={token}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)


def run(
    job: Path,
    device: Path,
    output_dir: Path,
    *,
    job_id: str = "1",
    validate: bool = False,
    timeout: float = 600.0,
) -> RunOutcome:
    """lava-run the job on the device; killed with what it started after timeout seconds."""
    output_dir.mkdir(parents=True, exist_ok=True)
    log = output_dir / ("validate.log" if validate else "lava-run.log")
    argv = [LAVA_RUN, "--job-id", job_id, "--output-dir", str(output_dir)]
    argv += ["--device", str(device), *(["--validate"] if validate else []), str(job)]
    token = secrets.token_hex(8)
    start = time.monotonic()
    with log.open("w") as out:
        try:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ, **{_RUN_TOKEN: token}),
                start_new_session=True,
            )
        except FileNotFoundError:
            raise SetupError(
                f"{LAVA_RUN} not found: run `invoke setup` (lava-dispatcher)"
            ) from None
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired as expired:
            os.killpg(process.pid, signal.SIGTERM)  # lava-run cleans up on SIGTERM
            try:
                process.wait(_TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            _kill_leftovers(token)
            raise SetupError(
                f"{job}: lava-run did not finish within {timeout:.0f}s (log: {log})"
            ) from expired
        finally:
            _kill_leftovers(token)
            shutil.rmtree(DISPATCHER_TMP / job_id, ignore_errors=True)
    seconds = time.monotonic() - start
    job_result, error, cases = parse_log(log.read_text(errors="replace"))
    return RunOutcome(job_result, error, cases, seconds, log)
