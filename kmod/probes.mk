# SPDX-License-Identifier: GPL-2.0
# Feature probes for APIs that Debian stable kernels backport inside one series
# (5.10.223 vs 5.10.262, 6.12.x): the version number cannot tell.
# pvf_compat.h is the only consumer of these macros. Included by the Kbuild file that
# pvfront generates from modules.toml.
pvf_hdr := $(srctree)/include/linux
pvf_probe = $(if $(shell grep -s -l -E '$(1)' $(addprefix $(pvf_hdr)/,$(2))),-D$(3))
ccflags-y += $(call pvf_probe,bool set_capacity_and_notify,genhd.h blkdev.h,PVF_HAVE_SET_CAPACITY_AND_NOTIFY)
ccflags-y += $(call pvf_probe,device_match_driver_override,device.h,PVF_HAVE_DEVICE_DRIVER_OVERRIDE)
