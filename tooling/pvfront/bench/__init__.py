"""How much faster is pvfront than the in-tree and emulated devices? Measured, not assumed.

Under TCG wall time is emulation-bound and noisy, so the headline figures are what a hypervisor
pays per request: device notifications, accesses to the device's MMIO/PIO registers (each one
an exit under KVM) and interrupts. They come from QEMU's trace events, switched on over QMP
only around the workload so boot and console traffic stay out of the counts, and from the
guest's own counters (/proc/interrupts, /sys/block/*/stat, interface statistics). Throughput
is measured in separate boots without tracing, in the same QEMU configuration and on the same
disk image, the setups alternating boot by boot, and is compared as a ratio.

Every measurement is a function returning dataclasses; `run_bench` runs them all, judges the
goals and `write_outputs` keeps the JSON (and a chart) under build/bench/.
"""

from pvfront.bench.run import bench_command

__all__ = ["bench_command"]
