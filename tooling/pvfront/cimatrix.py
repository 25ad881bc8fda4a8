"""CI matrix workflows: one job per target of targets.toml, for GitHub Actions or GitLab CI.

pvfront runs no scheduler of its own: the CI system spreads `invoke test --target T` over its
runners and keeps $PVFRONT_CACHE (kernels, build roots, images) per target between runs. What
is written depends on targets.toml alone: the same tree gives the same bytes, and no path of
the machine that wrote it appears.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pvfront.errors import UsageError
from pvfront.metadata import render
from pvfront.targets import TargetSet


@dataclass(frozen=True)
class CiSystem:
    name: str
    template: str
    conventional_path: str  # where the system looks for it, from the repository's root


SYSTEMS = {
    "github": CiSystem("github", "ci-github.yml.j2", ".github/workflows/pvfront.yml"),
    "gitlab": CiSystem("gitlab", "ci-gitlab.yml.j2", ".gitlab-ci.yml"),
}
# What a bare debian:bookworm container needs before `pip install -e '.[test]'` can run; the
# rest comes from `invoke setup`, as on any machine.
BOOTSTRAP_PACKAGES = ("ca-certificates", "git", "python3", "python3-venv")
CACHE_DIR = ".pvfront-cache"
# A job builds, boots every scenario on its target and the real-guest suite on the default one:
# .ci/run's hour for all targets, with room for a cold cache on a slower runner.
JOB_TIMEOUT_MINUTES = 90


def system(name: str) -> CiSystem:
    try:
        return SYSTEMS[name]
    except KeyError:
        raise UsageError(f"unknown CI system '{name}' (known: {', '.join(SYSTEMS)})") from None


def workflow(targets: TargetSet, ci: CiSystem, targets_file: str = "targets.toml") -> str:
    """The workflow text: a job per target, in targets.toml's order."""
    return render(
        ci.template,
        targets_file=targets_file,
        target_ids=targets.ids,
        cache_dir=CACHE_DIR,
        bootstrap_packages=BOOTSTRAP_PACKAGES,
        timeout_minutes=JOB_TIMEOUT_MINUTES,
    )


def write_workflow(text: str, out: Path, force: bool = False) -> bool:
    """Write text to out. A different file already there is the user's until force says
    otherwise; the same text is left alone. Returns whether the file changed."""
    if out.is_dir():
        raise UsageError(f"{out}: a directory; give the workflow file's name")
    if out.exists():
        if out.read_text(errors="replace") == text:
            return False
        if not force:
            raise UsageError(f"{out}: exists and differs from the export; --force replaces it")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return True
