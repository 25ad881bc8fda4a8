"""The console driver: command markers, exit status, output cleaning, kernel trouble."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import pexpect
import pytest

from pvfront.console import (
    SYNC_MARK,
    CommandFailed,
    Console,
    ConsoleLog,
    GuestHang,
    GuestStopped,
    KernelLeak,
    KernelLockup,
    KernelOops,
    KernelPanic,
    KernelWarning,
    KernelWatch,
    ModuleLoadError,
    QemuCrashed,
    clean,
)
from pvfront.errors import EXIT_FAILED, EXIT_KERNEL, EXIT_SETUP

WARN_REPORT = """\
[    5.100000] ------------[ cut here ]------------
[    5.100100] pvfront trouble: warning on request
[    5.100200] WARNING: CPU: 0 PID: 93 at trouble.c:24 trouble_init+0x3e/0x1000 [trouble]
[    5.100300] Modules linked in: trouble(OE+)
[    5.100400] RIP: 0010:trouble_init+0x3e/0x1000 [trouble]
[    5.100500] Call Trace:
[    5.100600]  <TASK>
[    5.100700]  do_one_initcall+0x56/0x220
[    5.100800]  </TASK>
[    5.100900] ---[ end trace 0000000000000000 ]---
"""

OOPS_REPORT = """\
[    6.149000] BUG: kernel NULL pointer dereference, address: 0000000000000000
[    6.149100] #PF: supervisor write access in kernel mode
[    6.149200] Oops: 0002 [#1] PREEMPT SMP NOPTI
[    6.149300] RIP: 0010:trouble_init+0x4a/0x1000 [trouble]
[    6.149400] Call Trace:
[    6.149500]  <TASK>
[    6.149600]  </TASK>
[    6.149700] ---[ end trace 0000000000000000 ]---
"""

PANIC = "[    7.000000] Kernel panic - not syncing: Fatal exception\n"


def watch_of(text: str, *allow: str) -> KernelWatch:
    import re

    watch = KernelWatch(allow=[re.compile(a) for a in allow])
    watch.feed(text)
    return watch


@pytest.mark.parametrize(
    ("line", "kind", "error"),
    [
        ("Kernel panic - not syncing: sysrq triggered crash", "panic", KernelPanic),
        ("BUG: kernel NULL pointer dereference, address: 0000000000000000", "oops", KernelOops),
        ("Oops: 0002 [#1] PREEMPT SMP NOPTI", "oops", KernelOops),
        ("kernel BUG at lib/list_debug.c:33!", "oops", KernelOops),
        ("general protection fault, probably for non-canonical address", "oops", KernelOops),
        (
            "watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [insmod:93]",
            "soft-lockup",
            KernelLockup,
        ),
        ("INFO: task insmod:93 blocked for more than 120 seconds.", "hung-task", KernelLockup),
        ("WARNING: CPU: 0 PID: 1 at drivers/x.c:10 f+0x1/0x2", "warning", KernelWarning),
        ("pvf_blk: Unknown symbol pvf_ring_add (err -2)", "unknown-symbol", ModuleLoadError),
        (
            "pvf_blk: disagrees about version of symbol module_layout",
            "symbol-version",
            ModuleLoadError,
        ),
        ("Call Trace:", "call-trace", KernelWarning),
        ("CPU: 0 UID: 0 PID: 108 Comm: insmod Tainted: G W OE 7.2.13", "call-trace", KernelWarning),
        ("CPU: 1 PID: 93 Comm: insmod Not tainted", "call-trace", KernelWarning),
        # What the debug kernel's checkers print (kconfig/debug.config).
        ("BUG: KASAN: slab-out-of-bounds in pvf_ring_get+0x1d/0x80", "oops", KernelOops),
        ("BUG: KFENCE: use-after-free read in pvf_blk_done+0x2a/0x90", "oops", KernelOops),
        ("BUG: sleeping function called from invalid context at mm/slab.h:742", "oops", KernelOops),
        ("WARNING: possible circular locking dependency detected", "warning", KernelWarning),
        (
            "ODEBUG: free active (active state 0) object: ffff8880 object type: timer_list",
            "debug-objects",
            KernelWarning,
        ),
        (
            "DMA-API: pvf_pci 0000:00:03.0: device driver frees DMA memory with wrong function",
            "dma-api",
            KernelWarning,
        ),
        ("DMA-API: debugging out of memory - disabling", "dma-api", KernelWarning),
        (
            "kmemleak: 2 new suspected memory leaks (see /sys/kernel/debug/kmemleak)",
            "memory-leak",
            KernelLeak,
        ),
        ("kmemleak: Kernel memory leak detector disabled", "memory-leak", KernelLeak),
    ],
)
def test_each_trouble_message_has_its_kind_and_error(line, kind, error):
    watch = watch_of(f"[    1.000000] {line}\n")
    trouble = watch.first()
    assert trouble is not None
    assert (trouble.pattern.kind, trouble.pattern.error) == (kind, error)


def test_ordinary_kernel_lines_are_no_trouble():
    watch = watch_of(
        "[    1.0] virtio_blk virtio0: [vda] 16384 512-byte logical blocks\n"
        "[    1.1] pvfront-init: started\n[    1.2] Warning: unrelated\n"
        # The debug kernel's checkers introduce themselves at boot.
        "[    0.3] ODEBUG: selftest passed\n[    0.4] ODEBUG: 12 of 12 active objects replaced\n"
        "[    0.5] DMA-API: preallocated 65536 debug entries\n"
        "[    0.6] DMA-API: debugging enabled by kernel config\n"
        "[    0.7] kmemleak: Kernel memory leak detector initialized (mem pool available: 15000)\n"
        "[    0.8] kmemleak: Automatic memory scanning thread started\n"
    )
    assert watch.first() is None and len(watch.lines) == 9


def test_a_warning_report_is_one_trouble_with_its_trace():
    watch = watch_of(WARN_REPORT)
    assert [t.pattern.kind for t in watch.found] == ["warning"]
    excerpt = watch.excerpt(watch.found[0])
    assert "WARNING: CPU: 0" in excerpt and "Call Trace:" in excerpt


def test_an_allowed_warning_allows_its_trace_but_not_a_later_panic():
    watch = watch_of(WARN_REPORT, r"WARNING: .*trouble_init")
    assert watch.found == [] and len(watch.allowed) == 1
    watch.feed(PANIC)
    assert watch.first().pattern.kind == "panic"


def test_an_allowed_report_does_not_hide_the_next_report():
    watch = watch_of(WARN_REPORT, r"WARNING:")
    watch.feed(OOPS_REPORT)
    assert [t.pattern.kind for t in watch.found] == ["oops"]


def test_an_oops_is_named_by_its_first_line_even_when_a_panic_follows():
    watch = watch_of(OOPS_REPORT + PANIC)
    assert [t.pattern.kind for t in watch.found] == ["oops", "panic"]
    assert watch.first().headline.startswith("[    6.149000] BUG: kernel NULL")


def test_a_dump_whose_call_trace_line_was_lost_is_still_a_trace_and_one_trouble():
    # Seen on sid's 7.x console: the dump's "Call Trace:" line never reached the serial line.
    watch = watch_of(
        "[ 6.37] CPU: 0 UID: 0 PID: 108 Comm: insmod Tainted: G W OE\n"
        "[ 6.37] Hardware name: QEMU Standard PC (Q35 + ICH9, 2009), BIOS dump_stack_lvl+0x5d\n"
        "[ 6.37]  trouble_init+0x6c/0xff0 [trouble]\n"
    )
    assert [t.pattern.kind for t in watch.found] == ["call-trace"]


def test_a_warning_report_with_its_cpu_line_is_still_one_trouble():
    watch = watch_of(
        WARN_REPORT.replace("Modules linked in", "CPU: 0 PID: 93 Comm: insmod\n[ 5.1] Mods")
    )
    assert [t.pattern.kind for t in watch.found] == ["warning"]


def test_a_bare_trace_gives_way_to_a_named_trouble():
    watch = watch_of("[ 1.0] CPU: 0 PID: 1 Comm: insmod\n[ 1.1] Call Trace:\n" + WARN_REPORT)
    assert watch.first().pattern.kind == "warning"


def test_lines_split_across_reads_and_escapes_are_handled():
    watch = KernelWatch()
    for char in "\x1b[0m[ 2.0] WARNING: CPU: 0 PID: 1\r\n":
        watch.feed(char)
    assert watch.lines == ["[ 2.0] WARNING: CPU: 0 PID: 1"]
    assert watch.first().pattern.kind == "warning"


def test_clean_strips_terminal_sequences():
    assert clean("\x1b[6npvfront# \x1b[1;31mred\x1b[0m\r\n\x1b]0;title\x07ok") == "pvfront# red\nok"


# ------------------------------------------------------------------ the shell protocol

BUSYBOX = shutil.which("busybox")


class FakeKmsg:
    """A FIFO standing in for the guest's /dev/kmsg: a thread prints what is written to it on
    the kernel console pipe, `delay` seconds later, as a printk printer thread may."""

    def __init__(self, path: Path, console_fd: int) -> None:
        self.path = path
        self.delay = 0.0
        os.mkfifo(path)
        self._fd = os.open(path, os.O_RDWR)  # never at EOF between the shell's writes
        self._console_fd = console_fd
        threading.Thread(target=self._print, daemon=True).start()

    def _print(self) -> None:
        with os.fdopen(self._fd, "r", encoding="utf-8") as records:
            for record in records:
                if record == "stop\n":
                    return
                time.sleep(self.delay)
                os.write(self._console_fd, re.sub(r"^<\d>", "", record).encode())

    def stop(self) -> None:
        with open(self.path, "w", encoding="utf-8") as fifo:
            fifo.write("stop\n")


@pytest.fixture
def local_console(tmp_path):
    """A Console driving the host's busybox sh on a pty, with a pipe as the kernel console
    and a FIFO as /dev/kmsg."""
    if BUSYBOX is None:
        pytest.skip("needs busybox on the host")
    shell = pexpect.spawn(
        BUSYBOX,
        ["sh", "-i"],
        encoding="utf-8",
        cwd=str(tmp_path),
        env={"PS1": "pvfront# ", "PATH": os.environ["PATH"], "TERM": "dumb"},
    )
    read_end, write_end = os.pipe()

    def alive():
        if shell.isalive():
            return None
        return -shell.signalstatus if shell.signalstatus else shell.exitstatus

    kmsg = FakeKmsg(tmp_path / "kmsg", write_end)
    console = Console(
        shell,
        read_end,
        ConsoleLog(tmp_path / "console.log"),
        alive,
        label="local",
        scratch_dir=str(tmp_path),
        kmsg=str(kmsg.path),
    )
    console.kernel_write = lambda text: os.write(write_end, text.encode())
    console.fake_kmsg = kmsg
    console.wait_prompt(10)
    yield console
    kmsg.stop()
    shell.close(force=True)
    console.log.close()
    os.close(read_end)
    os.close(write_end)


def test_run_returns_status_and_exact_output(local_console):
    result = local_console.run("echo hello; echo oops >&2")
    assert (result.status, result.output) == (0, "hello\noops\n")
    assert local_console.run("printf abc").output == "abc"
    assert local_console.run("(exit 7)", check=False).status == 7
    assert local_console.run("printf '\\033[1;31mred\\033[0m\\n'").output == "red\n"


def test_the_echoed_command_cannot_fake_a_result(local_console):
    # The command text holds what looks like a marker; only real output ends the command.
    result = local_console.run("echo '@@fake' E0@@; sleep 0.2; echo real")
    assert result.output == "@@fake E0@@\nreal\n"


def test_state_persists_and_stdin_is_not_the_console(local_console):
    local_console.run("cd /; X=42")
    assert local_console.run("echo $PWD $X").output == "/ 42\n"
    assert local_console.run("cat").output == ""  # reads /dev/null, not the next command


def test_long_and_multi_line_commands(local_console):
    long = "echo " + "x" * 3000 + " | wc -c"
    assert local_console.run(long).output.strip() == "3001"
    assert local_console.run("for i in 1 2; do\n  echo n$i\ndone").output == "n1\nn2\n"
    assert list(Path(local_console.scratch_dir).glob(".pvf-cmd-*")) == []  # cleaned up


def test_a_failing_command_raises_with_status_and_log(local_console):
    with pytest.raises(CommandFailed) as failed:
        local_console.run("echo nope; false")
    assert failed.value.exit_code == EXIT_FAILED
    assert (failed.value.status, failed.value.output) == (1, "nope\n")
    assert str(local_console.log.path) in str(failed.value)


def test_kernel_trouble_during_a_command_fails_it_unless_expected(local_console):
    threading.Timer(0.2, local_console.kernel_write, (WARN_REPORT,)).start()
    with pytest.raises(KernelWarning) as warning:
        local_console.run("sleep 1; echo done")
    assert warning.value.exit_code == EXIT_KERNEL
    assert "Call Trace:" in warning.value.excerpt

    with local_console.expecting([r"WARNING: .*trouble_init"]):
        threading.Timer(0.2, local_console.kernel_write, (WARN_REPORT,)).start()
        assert local_console.run("sleep 1; echo done").output == "done\n"


def test_a_report_the_kernel_prints_after_the_command_returned_still_fails_that_command(
    local_console,
):
    # printk's printer thread may put a command's messages on the serial line after the
    # command has returned; the console waits for its sync mark, which comes after them.
    local_console.fake_kmsg.delay = 0.1  # per line
    report = WARN_REPORT.replace("\n", "\\n")
    with pytest.raises(KernelWarning):
        local_console.run(f"printf '{report}' > {local_console.kmsg}")
    assert SYNC_MARK not in "\n".join(local_console.watch.lines)
    assert local_console.run("echo next").output == "next\n"


def test_a_console_that_never_prints_the_mark_is_waited_for_once(local_console):
    local_console.kmsg = "/nonexistent/kmsg"
    local_console.sync_timeout = 2.0
    started = time.monotonic()
    for _ in range(5):
        local_console.run("true")
    assert time.monotonic() - started < 2 * local_console.sync_timeout


def test_kernel_lines_interleaved_with_output_stay_out_of_it(local_console):
    noise = "".join(f"[    3.{i:06d}] virtio noise {i}\n" for i in range(50))
    threading.Thread(
        target=lambda: [local_console.kernel_write(line + "\n") for line in noise.splitlines()]
    ).start()
    result = local_console.run("for i in $(seq 1 200); do echo line$i; done")
    assert result.output.split() == [f"line{i}" for i in range(1, 201)]


def test_a_command_past_its_timeout_is_a_hang(local_console):
    started = time.monotonic()
    with pytest.raises(GuestHang) as hang:
        local_console.run("sleep 30", timeout=1)
    assert time.monotonic() - started < 3
    assert hang.value.exit_code == EXIT_KERNEL


def test_the_guest_going_away_is_a_crash_or_a_stop(local_console):
    threading.Timer(0.3, local_console.shell.kill, (9,)).start()
    with pytest.raises(QemuCrashed) as crashed:
        local_console.run("sleep 30")
    assert crashed.value.exit_code == EXIT_SETUP


def test_a_clean_exit_is_a_stop(local_console):
    with pytest.raises(GuestStopped):
        local_console.run("exit 0")


def test_the_log_keeps_both_streams(local_console):
    local_console.kernel_write("[ 9.0] a kernel line\n")
    local_console.run("echo a shell line")
    local_console.log.close()
    text = local_console.log.path.read_text()
    assert "[ 9.0] a kernel line" in text and "a shell line" in text
    assert "\x1b" not in text and "\r" not in text
