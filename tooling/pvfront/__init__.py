"""pvfront: build, check, package and boot a virtio frontend driver family on Debian kernels."""

__version__ = "0.1.0"
