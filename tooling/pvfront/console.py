"""Drive a guest's serial lines: run shell commands, watch the kernel console for trouble.

The shell runs on its own serial line, driven with pexpect. Each command is wrapped in markers
the command's echo cannot match (the marker is split by quotes in what is typed, whole only in
what the shell prints), so the output and exit status are exactly the command's. The kernel
console is a second stream: every line is checked for the messages that mean the kernel is in
trouble, and the first one fails the run with a classified reason and an excerpt, unless the
scenario said it expects that message.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import shlex
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pexpect
import pexpect.fdpexpect

from pvfront.errors import EXIT_FAILED, EXIT_KERNEL, EXIT_SETUP, PvfrontError

# OSC strings (titles), CSI sequences (cursor moves, colours, ash's `ESC[6n` size query), and
# the other two-byte escapes.
_ESCAPES = re.compile(r"\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
# Lines the generated /init writes to the kernel console to say how far it got.
INIT_STARTED = "pvfront-init: started"
INIT_LOADING = "pvfront-init: loading modules"
INIT_SHELL = "pvfront-init: shell"
# ash's line editor takes lines up to 1024 bytes; longer commands go through a file.
_MAX_TYPED = 700


def clean(text: str) -> str:
    """Terminal output as plain text: no escape sequences, no carriage returns."""
    return _ESCAPES.sub("", text).replace("\r", "")


# --------------------------------------------------------------------------- errors


class GuestError(PvfrontError):
    """The guest failed in a way the harness recognised; names the console log."""

    exit_code = EXIT_KERNEL
    reason = "guest"

    def __init__(
        self,
        message: str,
        *,
        log_path: Path | None = None,
        excerpt: str = "",
        exit_code: int | None = None,
    ) -> None:
        self.summary = message
        self.log_path = log_path
        self.excerpt = excerpt
        text = message + (f" (console log: {log_path})" if log_path else "")
        if excerpt:
            text += "\n" + "\n".join(f"    {line}" for line in excerpt.splitlines())
        super().__init__(text, exit_code=exit_code)


class KernelTrouble(GuestError):
    """The kernel console showed one of the messages that mean a kernel bug."""

    reason = "kernel"


class KernelPanic(KernelTrouble):
    reason = "panic"


class KernelOops(KernelTrouble):
    reason = "oops"


class KernelLockup(KernelTrouble):
    reason = "lockup"


class KernelWarning(KernelTrouble):
    reason = "warning"


class KernelLeak(KernelTrouble):
    """kmemleak found unreferenced memory, or turned itself off and can no longer say."""

    reason = "memory-leak"


class ModuleLoadError(KernelTrouble):
    """A module refers to symbols the kernel lacks or has with other CRCs: a build bug."""

    exit_code = EXIT_FAILED
    reason = "module-symbols"


class GuestHang(GuestError):
    """A command or the boot did not finish in its time."""

    reason = "hang"


class PromptMissing(GuestError):
    """The guest never offered a shell prompt."""

    reason = "no-prompt"


class QemuCrashed(GuestError):
    """QEMU died (a signal or an error status) without the kernel reporting anything."""

    exit_code = EXIT_SETUP
    reason = "qemu-crash"


class GuestStopped(GuestError):
    """QEMU exited cleanly while a command was expected: a reset (-no-reboot) or poweroff."""

    reason = "stopped"


class CommandFailed(GuestError):
    """A command the scenario ran exited non-zero."""

    exit_code = EXIT_FAILED
    reason = "command"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        output: str,
        log_path: Path | None = None,
        excerpt: str = "",
        exit_code: int | None = None,
    ) -> None:
        self.status = status
        self.output = output
        super().__init__(message, log_path=log_path, excerpt=excerpt, exit_code=exit_code)


# --------------------------------------------------------------------------- the kernel watch


@dataclass(frozen=True)
class Pattern:
    kind: str
    regex: re.Pattern[str]
    error: type[KernelTrouble]


# Most specific first: "watchdog: BUG: soft lockup" is a lockup, not an oops.
PATTERNS = (
    Pattern("panic", re.compile(r"Kernel panic - not syncing"), KernelPanic),
    Pattern(
        "soft-lockup", re.compile(r"soft lockup|hard LOCKUP|rcu_\w* detected stall"), KernelLockup
    ),
    Pattern("hung-task", re.compile(r"blocked for more than \d+ seconds"), KernelLockup),
    Pattern("unknown-symbol", re.compile(r"Unknown symbol"), ModuleLoadError),
    Pattern("symbol-version", re.compile(r"disagrees about version of symbol"), ModuleLoadError),
    # BUG() says "kernel BUG at file:line!" (lib/bug.c), and 6.1 follows it with "invalid
    # opcode: 0000 [#1]" where 6.12 says "Oops: invalid opcode".
    Pattern(
        "oops",
        re.compile(r"\bBUG: |\bkernel BUG at |general protection fault|\bOops\b"),
        KernelOops,
    ),
    # The debug kernel's checkers (kconfig/debug.config). KASAN, KFENCE and DEBUG_ATOMIC_SLEEP
    # say "BUG:", lockdep and DEBUG_LIST "WARNING:"; these name the fault on the line before
    # their WARNING (lib/debugobjects.c, kernel/dma/debug.c) or without one (mm/kmemleak.c),
    # and a checker that ran out of memory and stopped is trouble too. Their boot-time
    # notes ("ODEBUG: selftest passed", "DMA-API: preallocated ...") are not matched.
    Pattern(
        "memory-leak",
        re.compile(
            r"kmemleak: (\d+ new suspected memory leaks|Memory pool empty|"
            r"Kernel memory leak detector disabled)"
        ),
        KernelLeak,
    ),
    Pattern(
        "debug-objects",
        re.compile(r"ODEBUG: (\S+ \S+ \(active state|Out of memory)"),
        KernelWarning,
    ),
    Pattern("dma-api", re.compile(r"DMA-API: (\S+ \S+: |debugging out of memory)"), KernelWarning),
    Pattern("warning", re.compile(r"\bWARNING: "), KernelWarning),
    # dump_stack()'s header line (lib/dump_stack.c: dump_stack_print_info) opens every trace;
    # it still names one when the console lost the "Call Trace:" line (seen on sid's 7.x).
    Pattern(
        "call-trace",
        re.compile(r"Call Trace:|\bCPU: \d+ (UID: \d+ )?PID: \d+ Comm: "),
        KernelWarning,
    ),
)
# Lines that continue a report rather than start one: the trace of any report, the "Oops:"
# line that follows "BUG:" or "general protection fault".
_CONTINUES = {"call-trace": None, "oops": "oops"}
# How far a report reaches, at most; most end with an "---[ end trace" line.
_REPORT_LINES = 80
_END_OF_REPORT = re.compile(r"---\[ end (trace|Kernel panic)|cut here \]")
# After each command the shell writes this mark to /dev/kmsg and the console waits for it on
# the kernel console: printk may print from another context later (a printer thread, a deferred
# flush), so the messages a command caused can reach the serial line after it has returned.
# The records go out in order, so once the mark is printed everything before it has been.
# Level 3 (err): console_loglevel 4, as Debian's sysctl and `quiet` set it, still prints it.
SYNC_MARK = "pvfront-sync:"
_SYNC = re.compile(re.escape(SYNC_MARK) + r"(\w+)")


@dataclass
class Trouble:
    """A kernel message the scenario did not expect."""

    pattern: Pattern
    line_index: int  # in KernelWatch.lines
    headline: str


@dataclass
class KernelWatch:
    """Reads the kernel console line by line and keeps the trouble it finds.

    Each trouble message opens a report; the call trace inside it (and the "Oops:" line
    inside a "BUG:" report) belong to it, so allowing a WARNING allows its trace. A panic is
    trouble even inside an allowed report, unless it is allowed itself.
    """

    allow: list[re.Pattern[str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    found: list[Trouble] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)  # the expected lines that did show up
    synced: set[str] = field(default_factory=set)  # the SYNC_MARK tags printed so far
    _partial: str = ""
    _report: tuple[int, str] | None = None  # (first line index, kind) of the open report

    def feed(self, text: str) -> None:
        # Clean whole lines: an escape sequence may be split between two reads.
        self._partial += text
        *complete, self._partial = self._partial.split("\n")
        for line in complete:
            self._line(clean(line))

    def flush(self) -> None:
        """Treat an unterminated last line as complete (the stream ended)."""
        if self._partial:
            line, self._partial = self._partial, ""
            self._line(clean(line))

    def _continues_report(self, kind: str, index: int) -> bool:
        if kind not in _CONTINUES or self._report is None:
            return False
        start, report_kind = self._report
        if index - start > _REPORT_LINES:
            return False
        wanted = _CONTINUES[kind]
        return wanted is None or wanted == report_kind

    def _line(self, line: str) -> None:
        sync = _SYNC.search(line)
        if sync:
            self.synced.add(sync.group(1))
            return
        index = len(self.lines)
        self.lines.append(line)
        if _END_OF_REPORT.search(line):
            self._report = None
            return
        pattern = next((p for p in PATTERNS if p.regex.search(line)), None)
        if pattern is None or self._continues_report(pattern.kind, index):
            return
        self._report = (index, pattern.kind)
        if any(a.search(line) for a in self.allow):
            self.allowed.append(line)
        else:
            self.found.append(Trouble(pattern, index, line.strip()))

    def first(self) -> Trouble | None:
        """The trouble that started it all: later ones are usually its consequences (an oops
        then a panic); a bare call trace gives way to anything more specific."""
        specific = [t for t in self.found if t.pattern.kind != "call-trace"]
        candidates = specific or self.found
        return candidates[0] if candidates else None

    def excerpt(self, trouble: Trouble, before: int = 3, after: int = 40) -> str:
        start = max(0, trouble.line_index - before)
        return "\n".join(self.lines[start : trouble.line_index + after]).rstrip()

    def seen(self, regex: str | re.Pattern[str]) -> list[str]:
        compiled = re.compile(regex) if isinstance(regex, str) else regex
        return [line for line in self.lines if compiled.search(line)]


# --------------------------------------------------------------------------- the log


@dataclass
class ConsoleLog:
    """The boot's full console: kernel and shell lines in the order they arrived."""

    path: Path
    _file: TextIO | None = None
    _partial: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._file = self.path.open("a", encoding="utf-8", errors="replace")

    def write(self, source: str, text: str) -> None:
        if self._file is None:
            return
        buffered = self._partial.get(source, "") + text
        *complete, self._partial[source] = buffered.split("\n")
        for line in complete:
            self._file.write(clean(line) + "\n")
        self._file.flush()

    def note(self, text: str) -> None:
        self.write("harness", f"[pvfront] {text}\n")

    def close(self) -> None:
        if self._file is None:
            return
        for text in self._partial.values():
            if text:
                self._file.write(clean(text) + "\n")
        self._file.close()
        self._file = None


class _ShellLogger:
    """pexpect's logfile_read: everything the shell line sends goes to the console log."""

    def __init__(self, log: ConsoleLog) -> None:
        self.log = log

    def write(self, data: str) -> None:
        self.log.write("shell", data)

    def flush(self) -> None:
        pass


# --------------------------------------------------------------------------- the console


@dataclass(frozen=True)
class CommandResult:
    command: str
    status: int
    output: str  # stdout and stderr, escape sequences and carriage returns removed
    seconds: float


@dataclass
class Console:
    """The shell line (a pexpect spawn) and the kernel console (a readable fd) of one guest.

    `alive()` returns None while QEMU runs and its exit status once it has ended.
    """

    # A socket for a guest's serial line; a pty for a local shell (the tests).
    shell: pexpect.fdpexpect.fdspawn[str] | pexpect.spawn[str]
    kernel_fd: int | None
    log: ConsoleLog
    alive: Callable[[], int | None]
    label: str = "guest"
    watch: KernelWatch = field(default_factory=KernelWatch)
    prompt: str = "pvfront# "
    scratch_dir: str = "/tmp"  # where long commands are written before they run
    kmsg: str = "/dev/kmsg"  # where the shell writes SYNC_MARK for the kernel console
    sync_timeout: float = 5.0  # how long a command's mark may lag behind its end
    _token: str = field(default_factory=lambda: secrets.token_hex(3))
    _count: int = 0
    _kernel_eof: bool = False
    # None until the first mark shows whether this guest's kernel console prints them.
    _sync_works: bool | None = None

    def __post_init__(self) -> None:
        self.shell.logfile_read = _ShellLogger(self.log)

    # -- the kernel stream

    def pump_kernel(self, wait: float = 0.0) -> bool:
        """Read what the kernel console has; True if anything came."""
        if self.kernel_fd is None or self._kernel_eof:
            return False
        got = False
        while True:
            ready, _, _ = select.select([self.kernel_fd], [], [], wait if not got else 0)
            if not ready:
                return got
            try:
                data = os.read(self.kernel_fd, 65536)
            except (BlockingIOError, InterruptedError):
                return got
            except OSError:
                data = b""
            if not data:
                self._kernel_eof = True
                self.watch.flush()
                return got
            text = data.decode("utf-8", errors="replace")
            self.log.write("kernel", text)
            self.watch.feed(text)
            got = True

    def _drain_report(self, quiet: float = 0.4, limit: float = 3.0) -> None:
        """Let a kernel report finish printing: until the console is quiet or has ended."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self.pump_kernel(quiet):
            pass

    def check_kernel(self) -> None:
        """Raise the classified error for unexpected kernel trouble seen so far."""
        self.pump_kernel()
        if not self.watch.found:
            return
        self._drain_report()
        trouble = self.watch.first()
        assert trouble is not None
        later = sorted({t.pattern.kind for t in self.watch.found} - {trouble.pattern.kind})
        excerpt = self.watch.excerpt(trouble)
        self.watch.found.clear()
        self.log.note(f"{trouble.pattern.kind}: {trouble.headline}")
        then = f" (then: {', '.join(later)})" if later else ""
        raise trouble.pattern.error(
            f"{self.label}: kernel {trouble.pattern.kind}: {trouble.headline}{then}",
            log_path=self.log.path,
            excerpt=excerpt,
        )

    def allow(self, patterns: Iterable[str]) -> None:
        self.watch.allow.extend(re.compile(p) for p in patterns)

    @contextlib.contextmanager
    def expecting(self, patterns: Sequence[str]) -> Iterator[None]:
        """Kernel messages matching patterns are expected inside this block."""
        compiled = [re.compile(p) for p in patterns]
        if not compiled:
            yield
            return
        self.watch.allow.extend(compiled)
        try:
            yield
            self.pump_kernel(0.05)  # a message printed just before the block ends still counts
        finally:
            for pattern in compiled:
                self.watch.allow.remove(pattern)

    # -- the shell stream

    def _raise_ended(self, what: str) -> None:
        """QEMU has gone away while waiting for what: say why, kernel trouble first."""
        # Give QEMU a moment to finish exiting so its status tells a crash from a reset.
        for _ in range(50):
            if self.alive() is not None:
                break
            time.sleep(0.02)
        self.pump_kernel(0.2)
        self.watch.flush()
        self.check_kernel()
        status = self.alive()
        tail = "\n".join(self.watch.lines[-15:])
        if status is not None and status != 0:
            raise QemuCrashed(
                f"{self.label}: QEMU exited with status {status} while waiting for {what}",
                log_path=self.log.path,
                excerpt=tail,
            )
        raise GuestStopped(
            f"{self.label}: the guest stopped while waiting for {what} (reset "
            f"or poweroff, no kernel message)",
            log_path=self.log.path,
            excerpt=tail,
        )

    def _expect(
        self,
        pattern: re.Pattern[str],
        timeout: float,
        what: str,
        on_timeout: Callable[[], GuestError],
    ) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            self.check_kernel()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.check_kernel()
                raise on_timeout()
            try:
                self.shell.expect(pattern, timeout=min(0.1, remaining))
                self.pump_kernel()  # keep the log in arrival order
                # expect() returned, so the one pattern (a regex, not EOF or TIMEOUT) matched.
                assert isinstance(self.shell.match, re.Match)
                return self.shell.match
            except pexpect.TIMEOUT:
                if self.alive() is not None:
                    self._raise_ended(what)
            except pexpect.EOF:
                self._raise_ended(what)

    def wait_prompt(
        self, timeout: float, diagnose: Callable[[Console, float], GuestError] | None = None
    ) -> float:
        """Wait for the first shell prompt; returns the seconds it took.

        diagnose: how to say where a boot stopped when no prompt came (the generated
        /init's stage markers by default).
        """
        started = time.monotonic()

        def missing() -> GuestError:
            if diagnose is not None:
                return diagnose(self, timeout)
            reached = [m for m in (INIT_STARTED, INIT_LOADING, INIT_SHELL) if self.watch.seen(m)]
            tail = "\n".join(self.watch.lines[-15:])
            if not reached:
                return GuestHang(
                    f"{self.label}: the kernel did not start /init within {timeout:.0f}s",
                    log_path=self.log.path,
                    excerpt=tail,
                )
            if reached[-1] == INIT_LOADING:
                return GuestHang(
                    f"{self.label}: loading the modules at boot did not finish "
                    f"within {timeout:.0f}s",
                    log_path=self.log.path,
                    excerpt=tail,
                )
            return PromptMissing(
                f"{self.label}: /init ran but no shell prompt came within {timeout:.0f}s",
                log_path=self.log.path,
                excerpt=tail,
                exit_code=EXIT_SETUP,
            )

        self._expect(re.compile(re.escape(self.prompt)), timeout, "the shell prompt", missing)
        return time.monotonic() - started

    def run(self, command: str, timeout: float = 30.0, *, check: bool = True) -> CommandResult:
        """Run command in the guest shell; raises CommandFailed on a non-zero status if check.

        The command runs in the shell itself (`eval`: `cd` and variables persist) with stdin
        from /dev/null, so nothing it does can swallow the next command.
        """
        started = time.monotonic()
        self.log.note(f"run: {command}")
        if "\n" in command or len(command) > _MAX_TYPED:
            script = self._upload_script(command, timeout)
            status, output = self._run_line(
                f'eval "$(cat {script}; rm -f {script})"', command, timeout
            )
        else:
            status, output = self._run_line(f"eval {shlex.quote(command)}", command, timeout)
        result = CommandResult(command, status, output, time.monotonic() - started)
        if check and status != 0:
            raise CommandFailed(
                f"{self.label}: `{command}` exited with status {status}",
                status=status,
                output=output,
                log_path=self.log.path,
                excerpt=output[-2000:],
            )
        return result

    def _upload_script(self, command: str, timeout: float) -> str:
        """Write a long or multi-line command to a guest file in pieces the line editor takes."""
        self._count += 1
        path = f"{self.scratch_dir}/.pvf-cmd-{self._token}-{self._count}"
        pieces = [f": > {path}"]
        for line in command.split("\n"):
            chunks = [line[i : i + _MAX_TYPED // 2] for i in range(0, len(line), _MAX_TYPED // 2)]
            pieces += [f"printf %s {shlex.quote(chunk)} >> {path}" for chunk in chunks]
            pieces.append(f"echo >> {path}")
        for piece in pieces:
            status, output = self._run_line(piece, piece, timeout)
            if status != 0:
                raise GuestError(
                    f"{self.label}: could not write the command file: {output}",
                    log_path=self.log.path,
                    exit_code=EXIT_SETUP,
                )
        return path

    def _shell_before(self) -> str:
        """What the shell printed before the last match (pexpect keeps None until one)."""
        return self.shell.before if isinstance(self.shell.before, str) else ""

    def _run_line(self, shell_line: str, command: str, timeout: float) -> tuple[int, str]:
        self._count += 1
        tag = f"{self._token}{self._count}"
        # Typed: '@@'TAG...; printed: @@TAG... Only the output can match the markers.
        mark = f"echo '<3>{SYNC_MARK}'{tag} >{self.kmsg} 2>/dev/null; " if self._syncing else ""
        line = (
            f"echo '@@'{tag}B; {shell_line} </dev/null; "
            f"pvf_status=$?; {mark}echo '@@'{tag}E$pvf_status'@@'"
        )
        begin = re.compile(rf"@@{tag}B\r?\n")
        end = re.compile(rf"@@{tag}E(\d+)@@")
        started = time.monotonic()
        self.shell.sendline(line)

        def hang() -> GuestError:
            return GuestHang(
                f"{self.label}: command did not finish within {timeout:.0f}s: {command}",
                log_path=self.log.path,
                excerpt=clean(self._shell_before())[-2000:],
            )

        self._expect(begin, timeout, f"command `{command}` to start", hang)
        ended = self._expect(
            end,
            max(0.1, timeout - (time.monotonic() - started)),
            f"command `{command}` to finish",
            hang,
        )
        output = clean(self._shell_before())
        status = int(ended.group(1))
        self._wait_sync(tag)
        self.check_kernel()
        return status, output

    @property
    def _syncing(self) -> bool:
        return self.kernel_fd is not None and self._sync_works is not False

    def _wait_sync(self, tag: str) -> None:
        """Read the kernel console up to the command's mark: all it caused has been printed."""
        if not self._syncing:
            self.pump_kernel(0.02)
            return
        deadline = time.monotonic() + self.sync_timeout
        while tag not in self.watch.synced and time.monotonic() < deadline:
            if not self.pump_kernel(0.05) and self._kernel_eof:
                break
        if tag in self.watch.synced:
            self._sync_works = True
            self.watch.synced.discard(tag)
        elif self._sync_works is None:
            # No /dev/kmsg to write, or a console that does not print errors: do without.
            self._sync_works = False
            self.log.note("the kernel console does not print sync marks: not waiting for them")
        else:
            self.log.note(
                f"sync mark {tag} not on the kernel console after {self.sync_timeout:.0f}s"
            )
