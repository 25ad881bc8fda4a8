"""pytest wiring shared by tests/ and qemu-tests/: targets as a parameter, exit codes.

`--target ID` (repeatable) or `--all-targets` choose the kernels; a test taking the `target`
fixture runs once per chosen target, with the target id in its node id, so CI can shard by
target. The session's exit status follows pvfront's codes: 0 pass, 1 a test failed, 2 the
harness or setup failed (nothing meaningful was tested), 3 a guest kernel crashed or hung.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvfront import kcidb
from pvfront.console import GuestError
from pvfront.errors import (
    EXIT_FAILED,
    EXIT_KERNEL,
    EXIT_OK,
    EXIT_SETUP,
    PvfrontError,
    UsageError,
)
from pvfront.targets import Target, TargetSet, load_targets
from pvfront.workspace import Workspace

_SELECTED = pytest.StashKey[list[Target]]()
_SHARD = pytest.StashKey[tuple[int, int] | None]()
_EXIT_PROPERTY = "pvfront_exit_code"
# What a report carries to the xdist controller for KCIDB: the target and kernel release a
# test ran on, and the console log and excerpt of a guest that failed.
_TARGET_PROPERTY = "pvfront_target"
_RELEASE_PROPERTY = "pvfront_release"
_LOG_PROPERTY = "pvfront_console_log"
_EXCERPT_PROPERTY = "pvfront_excerpt"
_TARGET_PARAMETERS = ("target", "real_target")
_TREE_FIXTURES = ("target_tree", "real_target_tree")
# When several tests fail differently, the session reports the gravest.
_GRAVITY = {EXIT_OK: 0, EXIT_FAILED: 1, EXIT_SETUP: 2, EXIT_KERNEL: 3}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pvfront")
    group.addoption(
        "--target",
        action="append",
        default=[],
        metavar="ID",
        help="run target-parametrized tests for this target (repeatable; "
        "default: the default target of targets.toml)",
    )
    group.addoption(
        "--all-targets", action="store_true", help="run target-parametrized tests for every target"
    )
    group.addoption(
        "--kcidb",
        metavar="FILE",
        help="write the results of the target-parametrized tests as a KCIDB v4 report",
    )
    group.addoption(
        "--shard",
        metavar="I/N",
        help="run only the I-th of N shards (1-based), for runners without a job per target: "
        "a target's tests stay in one shard, the others are dealt out in turn",
    )
    group.addoption(
        "--real-guests",
        action="store_true",
        help="run the real-guest suite (Debian images) on every selected target, "
        "not only the default one, with its kernel-upgrade test",
    )


def pytest_configure(config: pytest.Config) -> None:
    ws = Workspace.discover()
    try:
        targets = load_targets(ws.targets_file)
        ids = config.getoption("--target")
        if ids and config.getoption("--all-targets"):
            raise UsageError("give either --target or --all-targets, not both")
        if config.getoption("--all-targets"):
            selected = list(targets.targets)
        elif ids:
            selected = [targets.get(i) for i in dict.fromkeys(ids)]
        else:
            selected = [targets.default]
        shard = parse_shard(config.getoption("--shard"))
    except PvfrontError as exc:
        # pytest's own usage errors exit 4; pvfront's setup errors exit 2.
        pytest.exit(f"pvfront: error: {exc}", returncode=EXIT_SETUP)
    config.stash[_SELECTED] = selected
    config.stash[_SHARD] = shard
    config.pluginmanager.register(ExitCodes(), "pvfront-exit-codes")
    kcidb_file = config.getoption("--kcidb")
    if kcidb_file and not hasattr(config, "workerinput"):  # the xdist controller writes it
        config.pluginmanager.register(KcidbRecorder(ws, targets, Path(kcidb_file)), "pvfront-kcidb")


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """--shard I/N as (I, N), 1 <= I <= N; None when not given."""
    if value is None:
        return None
    index, _, count = value.partition("/")
    if not (index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise UsageError(f"--shard {value}: give I/N with 1 <= I <= N, as in 2/4")
    return int(index), int(count)


def _shard_key(item: pytest.Item) -> str:
    """What decides an item's shard: its target, so that a target's kernel, build root and
    builds are made in one shard only; the node id for the tests that take no target."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name in _TARGET_PARAMETERS:
        if name in params:
            return f"target {params[name].id}"
    return item.nodeid


def _deal_shards(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep this shard's items: the distinct keys, in collection order, dealt out in turn."""
    shard = config.stash[_SHARD]
    if shard is None:
        return
    index, count = shard
    turns: dict[str, int] = {}
    for item in items:
        turns.setdefault(_shard_key(item), len(turns) % count + 1)
    kept = [item for item in items if turns[_shard_key(item)] == index]
    deselected = [item for item in items if turns[_shard_key(item)] != index]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = kept


def real_guest_targets(config: pytest.Config) -> list[Target]:
    """Where the real-guest suite runs: every selected target with --real-guests; otherwise
    one, the default target when it is selected (a Debian image boot costs a minute). Images
    are made of the archive's packages: a kernel pvfront builds itself has none."""
    selected = [t for t in config.stash[_SELECTED] if not t.from_source]
    if config.getoption("--real-guests"):
        return selected
    default = load_targets(Workspace.discover().targets_file).default
    return [default] if default in selected else selected[:1]


# Fixtures that hand a test a provisioned Debian kernel; their tests are marked `kernel`.
_KERNEL_FIXTURES = frozenset({"target_tree", "real_target_tree"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _KERNEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kernel)
    _deal_shards(config, items)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" in metafunc.fixturenames:
        selected = metafunc.config.stash[_SELECTED]
        metafunc.parametrize("target", selected, ids=[t.id for t in selected], scope="session")
    if "real_target" in metafunc.fixturenames:
        chosen = real_guest_targets(metafunc.config)
        metafunc.parametrize("real_target", chosen, ids=[t.id for t in chosen], scope="session")


@pytest.fixture(scope="session")
def ws() -> Workspace:
    return Workspace.discover()


@pytest.fixture(scope="session")
def selected_targets(request: pytest.FixtureRequest) -> list[Target]:
    """The targets this session runs on (--target, --all-targets or the default), in order."""
    return request.config.stash[_SELECTED]


@dataclasses.dataclass(frozen=True)
class RepositoryKey:
    """A throw-away OpenPGP signing key (Ed25519, no passphrase) in its own GnuPG home."""

    gnupghome: Path
    uid: str


@pytest.fixture(scope="session")
def repository_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RepositoryKey]:
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    uid = "pvfront tests <tests@example.org>"
    env = {"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"}
    subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
        env=env,
        check=True,
        capture_output=True,
    )
    yield RepositoryKey(home, uid)
    # gpg started an agent for the home; it would outlive the session
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True)


def _provisioned(ws: Workspace, target: Target):
    """The target's kernel tree, fetched if not cached; a target whose unstable archive
    cannot provide it today skips, with apt's reason."""
    from pvfront import provision
    from pvfront.errors import ArchiveUnavailable

    try:
        return provision.ensure(ws, [target])[0]
    except ArchiveUnavailable as exc:
        pytest.skip(f"{target.id} unavailable today: {exc}")


@pytest.fixture(scope="session")
def target_tree(ws: Workspace, target: Target):
    """The provisioned kernel of the target under test."""
    return _provisioned(ws, target)


@pytest.fixture(scope="session")
def real_target_tree(ws: Workspace, real_target: Target):
    """The provisioned kernel of a real-guest target (see real_guest_targets)."""
    return _provisioned(ws, real_target)


def exit_code_of(excinfo: pytest.ExceptionInfo | None, when: str) -> int:
    """The pvfront exit code a failed test phase stands for."""
    if excinfo is None:
        return EXIT_FAILED
    error = excinfo.value
    if isinstance(error, PvfrontError):
        return error.exit_code
    if when != "call" or isinstance(error, (ImportError, OSError)):
        return EXIT_SETUP  # a fixture or the environment broke before the test could judge
    return EXIT_FAILED


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    report.user_properties.extend(_run_properties(item, call))
    if report.failed:
        # A user property travels to the xdist controller; JUnit XML takes the properties of
        # the item (which the teardown report copies), so record it on both.
        prop = (_EXIT_PROPERTY, exit_code_of(call.excinfo, call.when))
        report.user_properties.append(prop)
        item.user_properties.append(prop)


def _run_properties(item: pytest.Item, call: pytest.CallInfo) -> list[tuple[str, str]]:
    """Where a target-parametrized test ran, and the guest's log when it failed."""
    params = getattr(item, "callspec", None)
    target = next(
        (params.params[p] for p in _TARGET_PARAMETERS if params and p in params.params), None
    )
    if target is None:
        return []
    properties = [(_TARGET_PROPERTY, target.id)]
    funcargs = getattr(item, "funcargs", {})
    properties += [
        (_RELEASE_PROPERTY, funcargs[f].release) for f in _TREE_FIXTURES if f in funcargs
    ]
    error = call.excinfo.value if call.excinfo else None
    if isinstance(error, GuestError):
        if error.log_path:
            properties.append((_LOG_PROPERTY, str(error.log_path)))
        properties.append((_EXCERPT_PROPERTY, error.excerpt or error.summary))
    return properties


class KcidbRecorder:
    """Collects the target-parametrized tests' reports; writes them as KCIDB at the end.
    Tests without a target (the toolchain's own unit tests) test no kernel and are left out."""

    def __init__(self, ws: Workspace, targets: TargetSet, path: Path) -> None:
        self.targets = targets
        self.path = path
        self.report = kcidb.Report(kcidb.Checkout.of(ws))
        self.run_id = kcidb.run_id(time.time())
        self.runs: dict[str, kcidb.TestRun] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        properties = dict(report.user_properties)
        if _TARGET_PROPERTY not in properties:
            return
        run = self.runs.get(report.nodeid)
        if run is None:
            module, _, function = report.nodeid.partition("::")
            target = self.targets.get(properties[_TARGET_PROPERTY])
            run = self.runs[report.nodeid] = kcidb.TestRun(
                run_id=self.run_id,
                name=report.nodeid,
                path=kcidb.kcidb_path(Path(module).stem, function.partition("[")[0]),
                build=kcidb.Build.for_target(self.report.checkout, target, None),
                start=report.start,
            )
        if _RELEASE_PROPERTY in properties:
            run.build = dataclasses.replace(run.build, release=properties[_RELEASE_PROPERTY])
        run.duration += report.duration
        if report.skipped:
            run.statuses.append("SKIP")
        elif report.failed:
            exit_code = properties.get(_EXIT_PROPERTY, EXIT_FAILED)
            run.statuses.append(kcidb.STATUS_BY_EXIT.get(exit_code, "ERROR"))
        elif report.when == "call":
            run.statuses.append("PASS")
        if _LOG_PROPERTY in properties:
            run.log_path = Path(properties[_LOG_PROPERTY])
        run.log_excerpt = properties.get(_EXCERPT_PROPERTY, run.log_excerpt)

    def _builds_by_target(self) -> None:
        """A test that took no kernel tree ran on the release its target's other tests had."""
        known = {r.build.name: r.build for r in self.runs.values() if r.build.release}
        for run in self.runs.values():
            if run.build.release is None:
                run.build = known.get(run.build.name, run.build)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._builds_by_target()
        self.report.tests = list(self.runs.values())
        try:
            written = self.report.write(self.path)
        except (PvfrontError, OSError) as exc:
            session.config.get_terminal_writer().line(f"pvfront: error: {exc}", red=True)
            session.exitstatus = EXIT_SETUP
            return
        session.config.get_terminal_writer().line(
            f"KCIDB report: {written} ({len(self.runs)} tests)"
        )


class ExitCodes:
    """Collects the exit codes of failed phases and sets the session's exit status."""

    def __init__(self) -> None:
        self.worst = EXIT_OK

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Runs where reports are logged, so on the xdist controller too.
        for name, value in report.user_properties:
            if name == _EXIT_PROPERTY and _GRAVITY.get(value, 1) > _GRAVITY[self.worst]:
                self.worst = value

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus == pytest.ExitCode.OK:
            return
        if exitstatus == pytest.ExitCode.TESTS_FAILED:
            session.exitstatus = self.worst if self.worst != EXIT_OK else EXIT_FAILED
        else:  # interrupted, internal or usage error, nothing collected: nothing was tested
            session.exitstatus = EXIT_SETUP
