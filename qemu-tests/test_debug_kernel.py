"""The debug kernel catches what it is for, and the harness fails a test on each report.

A scenario passing on the debug target means something only if a bug of each kind would have
failed it: here a fixture module commits one of each on demand (trouble.ko), and each shows up
as the classified error the console watcher raises, or, for kmemleak, in the scan the
lifecycle test reads. Each case runs where the kernel has its checker: all of them on the
debug target (kconfig/debug.config), DEBUG_LIST on Debian's kernels too.
"""

from __future__ import annotations

import re

import pytest

from pvf_support import kmemleak_forget_until_now, kmemleak_report, require
from pvfront.console import KernelOops, KernelWarning

pytestmark = pytest.mark.qemu


@pytest.mark.parametrize(
    ("action", "option", "error", "report"),
    [
        ("kasan", "KASAN", KernelOops, r"BUG: KASAN: slab-out-of-bounds in trouble_"),
        ("lockdep", "PROVE_LOCKING", KernelWarning, "possible circular locking dependency"),
        ("sleep", "DEBUG_ATOMIC_SLEEP", KernelOops, "sleeping function called from invalid"),
        ("odebug", "DEBUG_OBJECTS_FREE", KernelWarning, r"ODEBUG: free active .* timer_list"),
        ("list", "DEBUG_LIST", KernelWarning, "list_add double add"),
    ],
)
def test_each_checker_reports_its_bug_and_the_report_fails_the_command(
    target_tree, trouble_module, guest_factory, action, option, error, report
):
    require(target_tree, option)
    if action == "list" and target_tree.built_in("CONFIG_BUG_ON_DATA_CORRUPTION"):
        error = KernelOops  # Debian's kernels make a corrupted list a BUG(), not a WARN()
    insmod = f"insmod /lib/modules/{target_tree.release}/extra/trouble.ko action={action}"
    with guest_factory(target_tree, modules=[trouble_module]) as g:
        with pytest.raises(error) as caught:
            g.run(insmod)
        assert any(re.search(report, line) for line in g.kernel_lines), caught.value


def test_kmemleak_names_an_allocation_nothing_points_to(target_tree, trouble_module, guest_factory):
    require(target_tree, "DEBUG_KMEMLEAK")
    insmod = f"insmod /lib/modules/{target_tree.release}/extra/trouble.ko action=leak"
    with guest_factory(target_tree, modules=[trouble_module]) as g:
        kmemleak_forget_until_now(g)
        g.run(insmod)
        leaks = kmemleak_report(g)
        assert "unreferenced object" in leaks and "trouble_leak" in leaks, leaks
