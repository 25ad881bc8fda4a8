"""Loading modules one by one in a guest and reading back what each insmod said: how the
symbol-check tests hold predictions against a real kernel."""

from __future__ import annotations

import re
import shlex

# What a failed load prints: the kernel messages a cross-kernel insmod is expected to cause.
LOAD_FAILURES = [
    "disagrees about version of symbol",
    "Unknown symbol",
    "Invalid architecture",
    "section size must match",
    "version magic",
    "module verification failed",
]


def guest_path(target_id: str, module_name: str) -> str:
    return f"/x/{target_id}/{module_name}.ko"


def insmod_script(sequence: list[tuple[str, str]]) -> str:
    """Insmod each (target id, module) in turn, report each status and kernel messages, stop
    at the first failure, then unload what loaded."""
    lines = ["dmesg -c >/dev/null", "loaded="]
    for target_id, name in sequence:
        path = shlex.quote(guest_path(target_id, name))
        lines.append(
            f"out=$(insmod {path} 2>&1); rc=$?; "
            f"echo \"@@ {name} rc=$rc $out $(dmesg -c | tr '\\n' '|')\"; "
            f"[ $rc = 0 ] || {{ for m in $loaded; do rmmod $m; done; exit 0; }}; "
            f'loaded="{name} $loaded"'
        )
    lines.append("for m in $loaded; do rmmod $m; done")
    return "(\n" + "\n".join(lines) + "\n)"  # a subshell: `exit` must not end the guest shell


def parse_results(output: str) -> dict[str, tuple[int, str]]:
    results = {}
    for match in re.finditer(r"^@@ (\S+) rc=(\d+) (.*)$", output, re.M):
        results[match.group(1)] = (int(match.group(2)), match.group(3))
    return results
