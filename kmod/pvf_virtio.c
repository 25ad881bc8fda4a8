// SPDX-License-Identifier: GPL-2.0
/*
 * pvf_virtio.c - the pvf_virtio bus
 *
 * Device and driver registration, matching by virtio device id, feature
 * negotiation (VIRTIO_F_VERSION_1 required) and the status sequence
 * ACKNOWLEDGE -> DRIVER -> FEATURES_OK (read back) -> DRIVER_OK, with
 * FAILED on error and DEVICE_NEEDS_RESET treated as a broken device.
 */
#include <linux/module.h>
#include <linux/idr.h>
#include <linux/slab.h>
#include "pvf_compat.h"
#include "pvf_virtio.h"

static bool indirect = true;
module_param(indirect, bool, 0644);
MODULE_PARM_DESC(indirect,
		 "Negotiate VIRTIO_RING_F_INDIRECT_DESC when offered (default: Y)");

static bool event_idx = true;
module_param(event_idx, bool, 0644);
MODULE_PARM_DESC(event_idx,
		 "Negotiate VIRTIO_RING_F_EVENT_IDX when offered (default: Y)");

static DEFINE_IDA(pvf_index_ida);

static u8 pvf_get_status(struct pvf_device *vdev)
{
	return vdev->config->get_status(vdev);
}

static void pvf_add_status(struct pvf_device *vdev, u8 bits)
{
	might_sleep();
	vdev->config->set_status(vdev, pvf_get_status(vdev) | bits);
}

/**
 * pvf_cread_bytes - read device config consistently
 * @vdev: the device
 * @offset: byte offset in the device-specific config
 * @buf: destination, receives little-endian data
 * @len: bytes to read
 *
 * Retries until the config generation is the same before and after the
 * read, so multi-word fields are never torn.
 */
void pvf_cread_bytes(struct pvf_device *vdev, unsigned int offset,
		     void *buf, unsigned int len)
{
	unsigned int tries = 0;
	u32 gen;

	do {
		gen = vdev->config->generation(vdev);
		vdev->config->get(vdev, offset, buf, len);
	} while (gen != vdev->config->generation(vdev) && ++tries < 100);
}
PVF_EXPORT(pvf_cread_bytes);

/**
 * pvf_device_ready - set DRIVER_OK
 * @vdev: the device
 *
 * Drivers call this at the end of probe when they want to use their
 * queues before probe returns; the bus does it otherwise.
 */
void pvf_device_ready(struct pvf_device *vdev)
{
	u8 status = pvf_get_status(vdev);

	WARN_ON(status & VIRTIO_CONFIG_S_DRIVER_OK);
	vdev->config->set_status(vdev, status | VIRTIO_CONFIG_S_DRIVER_OK);
}
PVF_EXPORT(pvf_device_ready);

/**
 * pvf_break_device - mark a device and all its queues broken
 * @vdev: the device
 *
 * Used on surprise removal, DEVICE_NEEDS_RESET and misbehaving devices.
 * Safe in any context.
 */
void pvf_break_device(struct pvf_device *vdev)
{
	struct pvf_virtqueue *vq;
	unsigned long flags;

	spin_lock_irqsave(&vdev->vqs_lock, flags);
	WRITE_ONCE(vdev->broken, true);
	list_for_each_entry(vq, &vdev->vqs, list)
		pvf_vq_break(vq);
	spin_unlock_irqrestore(&vdev->vqs_lock, flags);
}
PVF_EXPORT(pvf_break_device);

/**
 * pvf_config_changed - transport reports a configuration change
 * @vdev: the device
 *
 * Safe in interrupt context; the driver's config_changed() runs later
 * from a work item, and only while the driver is bound.
 */
void pvf_config_changed(struct pvf_device *vdev)
{
	unsigned long flags;

	spin_lock_irqsave(&vdev->config_lock, flags);
	if (vdev->config_enabled)
		schedule_work(&vdev->config_work);
	else
		vdev->config_pending = true;
	spin_unlock_irqrestore(&vdev->config_lock, flags);
}
PVF_EXPORT(pvf_config_changed);

static void pvf_config_work(struct work_struct *work)
{
	struct pvf_device *vdev = container_of(work, struct pvf_device,
					       config_work);
	struct pvf_driver *drv;
	u8 status;

	status = pvf_get_status(vdev);
	if ((status & VIRTIO_CONFIG_S_NEEDS_RESET) && status != 0xff &&
	    !pvf_device_is_broken(vdev)) {
		dev_err(&vdev->dev, "device needs reset, marking it broken\n");
		pvf_break_device(vdev);
	}
	if (!vdev->dev.driver)
		return;
	drv = drv_to_pvf(vdev->dev.driver);
	if (drv->config_changed)
		drv->config_changed(vdev);
}

static void pvf_config_enable(struct pvf_device *vdev)
{
	spin_lock_irq(&vdev->config_lock);
	vdev->config_enabled = true;
	if (vdev->config_pending)
		schedule_work(&vdev->config_work);
	vdev->config_pending = false;
	spin_unlock_irq(&vdev->config_lock);
}

static void pvf_config_disable(struct pvf_device *vdev)
{
	spin_lock_irq(&vdev->config_lock);
	vdev->config_enabled = false;
	spin_unlock_irq(&vdev->config_lock);
	cancel_work_sync(&vdev->config_work);
}

static int pvf_bus_match(struct device *dev, pvf_bus_match_drv_t *drv)
{
	struct pvf_device *vdev = dev_to_pvf(dev);
	const u32 *id;

	for (id = drv_to_pvf(drv)->id_table; *id; id++)
		if (*id == vdev->id)
			return 1;
	return 0;
}

static int pvf_bus_uevent(pvf_bus_uevent_dev_t *dev,
			  struct kobj_uevent_env *env)
{
	const struct pvf_device *vdev;

	vdev = container_of(dev, struct pvf_device, dev);
	return add_uevent_var(env, "MODALIAS=pvf_virtio:d%08Xv%08X",
			      vdev->id, vdev->vendor);
}

/*
 * Transport-independent features taken whenever offered: ACCESS_PLATFORM
 * (the device's addresses go through the platform's DMA translation, so
 * pvf_ring uses the DMA API) and ORDER_PLATFORM (the device needs the
 * platform's DMA barriers).  Refusing ACCESS_PLATFORM would leave a device
 * that needs it unusable.
 */
static u64 pvf_driver_features(struct pvf_driver *drv)
{
	u64 features = BIT_ULL(VIRTIO_F_VERSION_1) |
		       BIT_ULL(VIRTIO_F_ACCESS_PLATFORM) |
		       BIT_ULL(VIRTIO_F_ORDER_PLATFORM);
	unsigned int i;

	if (indirect)
		features |= BIT_ULL(VIRTIO_RING_F_INDIRECT_DESC);
	if (event_idx)
		features |= BIT_ULL(VIRTIO_RING_F_EVENT_IDX);
	for (i = 0; i < drv->feature_table_size; i++)
		features |= BIT_ULL(drv->feature_table[i]);
	return features;
}

/* write &pvf_device.features and have the device accept them (FEATURES_OK) */
static int pvf_features_ok(struct pvf_device *vdev)
{
	int err;

	err = vdev->config->finalize_features(vdev);
	if (err)
		return err;
	pvf_add_status(vdev, VIRTIO_CONFIG_S_FEATURES_OK);
	if (!(pvf_get_status(vdev) & VIRTIO_CONFIG_S_FEATURES_OK)) {
		dev_err(&vdev->dev, "device refused features %#llx\n",
			vdev->features);
		return -ENODEV;
	}
	return 0;
}

static int pvf_negotiate(struct pvf_device *vdev, struct pvf_driver *drv)
{
	u64 offered = vdev->config->get_features(vdev);
	int err;

	if (!(offered & BIT_ULL(VIRTIO_F_VERSION_1))) {
		dev_err(&vdev->dev,
			"device does not offer VIRTIO_F_VERSION_1\n");
		return -ENODEV;
	}
	vdev->features = offered & pvf_driver_features(drv);
	/* config values the driver cannot use take their feature away */
	if (drv->validate) {
		err = drv->validate(vdev);
		if (err)
			return err;
	}
	return pvf_features_ok(vdev);
}

/*
 * Reset before a new start.  The broken flag goes first: a transport whose
 * reset times out, or that finds the device gone, sets it again, and a
 * device that did not reset must not look usable afterwards.
 */
static int pvf_reset_for_start(struct pvf_device *vdev)
{
	WRITE_ONCE(vdev->broken, false);
	pvf_reset_device(vdev);
	if (!vdev->config->is_present(vdev))
		return -ENODEV;
	return pvf_device_is_broken(vdev) ? -EIO : 0;
}

/* DRIVER -> FEATURES_OK (after ACKNOWLEDGE) with the features of probe */
static int pvf_renegotiate(struct pvf_device *vdev)
{
	pvf_add_status(vdev, VIRTIO_CONFIG_S_DRIVER);
	return pvf_features_ok(vdev);
}

/**
 * pvf_device_restart - reset a bound device and negotiate again
 * @vdev: the device; its driver must have deleted its queues
 *
 * For driver-level recovery (e.g. a transmit timeout): resets the device
 * and walks ACKNOWLEDGE -> DRIVER -> FEATURES_OK with the features
 * negotiated at probe.  The driver then creates its queues again and
 * calls pvf_device_ready().
 *
 * Return: 0; -EIO if the reset did not complete (the device stays
 * broken); -ENODEV if it is gone; another negative errno with the device
 * marked FAILED.
 */
int pvf_device_restart(struct pvf_device *vdev)
{
	int err;

	err = pvf_reset_for_start(vdev);
	if (err)
		return err;
	pvf_add_status(vdev, VIRTIO_CONFIG_S_ACKNOWLEDGE);
	err = pvf_renegotiate(vdev);
	if (err)
		pvf_add_status(vdev, VIRTIO_CONFIG_S_FAILED);
	return err;
}
PVF_EXPORT(pvf_device_restart);

/* DRIVER_OK unless the driver set it already; config changes may come */
static void pvf_device_running(struct pvf_device *vdev)
{
	if (!(pvf_get_status(vdev) & VIRTIO_CONFIG_S_DRIVER_OK))
		pvf_device_ready(vdev);
	pvf_config_enable(vdev);
}

static int pvf_dev_probe(struct device *dev)
{
	struct pvf_device *vdev = dev_to_pvf(dev);
	struct pvf_driver *drv = drv_to_pvf(dev->driver);
	int err;

	/* start from a clean device, a previous driver may have failed */
	err = pvf_reset_for_start(vdev);
	if (err)
		goto fail;
	pvf_add_status(vdev, VIRTIO_CONFIG_S_ACKNOWLEDGE);
	pvf_add_status(vdev, VIRTIO_CONFIG_S_DRIVER);

	err = pvf_negotiate(vdev, drv);
	if (err)
		goto fail;

	err = drv->probe(vdev);
	if (err)
		goto fail;

	pvf_device_running(vdev);
	return 0;

fail:
	pvf_add_status(vdev, VIRTIO_CONFIG_S_FAILED);
	return err;
}

static void pvf_dev_remove(struct device *dev)
{
	struct pvf_device *vdev = dev_to_pvf(dev);
	struct pvf_driver *drv = drv_to_pvf(dev->driver);

	pvf_config_disable(vdev);
	drv->remove(vdev);
	WARN_ONCE(!pvf_device_is_broken(vdev) && pvf_get_status(vdev),
		  "%s: driver left the device running\n", dev_name(dev));
	WARN_ONCE(!list_empty(&vdev->vqs), "%s: driver left queues\n",
		  dev_name(dev));
	/* ready for another driver */
	pvf_add_status(vdev, VIRTIO_CONFIG_S_ACKNOWLEDGE);
}

PVF_DEFINE_BUS_REMOVE(pvf_bus_remove, pvf_dev_remove)

/*
 * Wait for the queue and config interrupt handlers running now; those that
 * start later see what was written before (drivers/virtio/virtio.c
 * virtio_synchronize_cbs()).  pvf_pci waits with synchronize_irq(), whose
 * descriptor lock orders our broken flag before the handler's READ_ONCE()
 * of it in pvf_vq_interrupt().
 */
static void pvf_synchronize_cbs(struct pvf_device *vdev)
{
	if (vdev->config->synchronize_cbs)
		vdev->config->synchronize_cbs(vdev);
}

/*
 * Reboot, kexec or power-off, as drivers/virtio/virtio.c
 * virtio_dev_shutdown() (Linux 6.14) does it: a device left running could
 * write into memory that the next kernel owns, and an IOMMU switched off
 * under it may wedge it.  Break first, so nothing kicks the reset device.
 */
static void pvf_dev_shutdown(struct device *dev)
{
	struct pvf_device *vdev = dev_to_pvf(dev);
	struct pvf_driver *drv;

	/* without a driver there are no queues, so no DMA */
	if (!dev->driver)
		return;
	drv = drv_to_pvf(dev->driver);
	if (drv->shutdown) {
		drv->shutdown(vdev);
		return;
	}
	pvf_break_device(vdev);
	pvf_synchronize_cbs(vdev);
	pvf_reset_device(vdev);
}

#ifdef CONFIG_PM_SLEEP
static struct pvf_driver *pvf_bound_driver(struct pvf_device *vdev)
{
	return vdev->dev.driver ? drv_to_pvf(vdev->dev.driver) : NULL;
}

/**
 * pvf_device_freeze - quiesce a device for suspend or hibernation
 * @vdev: the device
 *
 * For the transport's system-sleep callbacks (suspend, freeze, poweroff),
 * as drivers/virtio/virtio.c virtio_device_freeze(): config changes stop,
 * the FAILED bit is remembered and the driver's freeze() stops the device
 * and deletes its queues.
 *
 * Return: 0, or the driver's error with config changes enabled again.
 */
int pvf_device_freeze(struct pvf_device *vdev)
{
	struct pvf_driver *drv = pvf_bound_driver(vdev);
	int err;

	pvf_config_disable(vdev);
	vdev->failed = pvf_get_status(vdev) & VIRTIO_CONFIG_S_FAILED;
	if (drv && drv->freeze) {
		err = drv->freeze(vdev);
		if (err) {
			pvf_config_enable(vdev);
			return err;
		}
	}
	return 0;
}
PVF_EXPORT(pvf_device_freeze);

/**
 * pvf_device_restore - bring a device back after suspend or hibernation
 * @vdev: the device, frozen with pvf_device_freeze()
 *
 * For the transport's system-sleep callbacks (resume, thaw, restore), as
 * drivers/virtio/virtio.c virtio_device_restore(): the device may have
 * been reset or powered off, so it is reset and walked to FEATURES_OK with
 * the features negotiated at probe; the driver's restore() rebuilds its
 * queues, then DRIVER_OK and config changes follow.
 *
 * Return: 0, or a negative errno with the device marked FAILED.
 */
int pvf_device_restore(struct pvf_device *vdev)
{
	struct pvf_driver *drv = pvf_bound_driver(vdev);
	int err;

	err = pvf_reset_for_start(vdev);
	if (err)
		return err;
	pvf_add_status(vdev, VIRTIO_CONFIG_S_ACKNOWLEDGE);
	/* a driver that failed before suspend: keep saying so */
	if (vdev->failed)
		pvf_add_status(vdev, VIRTIO_CONFIG_S_FAILED);
	if (!drv)
		return 0;

	err = pvf_renegotiate(vdev);
	if (err)
		goto fail;
	if (drv->restore) {
		err = drv->restore(vdev);
		if (err)
			goto fail;
	}
	pvf_device_running(vdev);
	return 0;

fail:
	pvf_add_status(vdev, VIRTIO_CONFIG_S_FAILED);
	return err;
}
PVF_EXPORT(pvf_device_restore);
#endif /* CONFIG_PM_SLEEP */

static ssize_t device_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	return sprintf(buf, "0x%04x\n", dev_to_pvf(dev)->id);
}
static DEVICE_ATTR_RO(device);

static ssize_t vendor_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	return sprintf(buf, "0x%04x\n", dev_to_pvf(dev)->vendor);
}
static DEVICE_ATTR_RO(vendor);

static ssize_t status_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	struct pvf_device *vdev = dev_to_pvf(dev);

	return sprintf(buf, "0x%02x\n", pvf_get_status(vdev));
}
static DEVICE_ATTR_RO(status);

static ssize_t features_show(struct device *dev,
			     struct device_attribute *attr, char *buf)
{
	return sprintf(buf, "%#018llx\n", dev_to_pvf(dev)->features);
}
static DEVICE_ATTR_RO(features);

static ssize_t broken_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	return sprintf(buf, "%d\n", pvf_device_is_broken(dev_to_pvf(dev)));
}
static DEVICE_ATTR_RO(broken);

static ssize_t modalias_show(struct device *dev,
			     struct device_attribute *attr, char *buf)
{
	struct pvf_device *vdev = dev_to_pvf(dev);

	return sprintf(buf, "pvf_virtio:d%08Xv%08X\n", vdev->id,
		       vdev->vendor);
}
static DEVICE_ATTR_RO(modalias);

static struct attribute *pvf_dev_attrs[] = {
	&dev_attr_device.attr,
	&dev_attr_vendor.attr,
	&dev_attr_status.attr,
	&dev_attr_features.attr,
	&dev_attr_broken.attr,
	&dev_attr_modalias.attr,
	NULL,
};
ATTRIBUTE_GROUPS(pvf_dev);

static struct bus_type pvf_bus = {
	.name		= "pvf_virtio",
	.match		= pvf_bus_match,
	.uevent		= pvf_bus_uevent,
	.probe		= pvf_dev_probe,
	.remove		= pvf_bus_remove,
	.shutdown	= pvf_dev_shutdown,
	.dev_groups	= pvf_dev_groups,
};

/**
 * __pvf_register_driver - register a driver on the pvf_virtio bus
 * @drv: the driver; @drv->driver.name must be set
 * @owner: module owning the driver
 *
 * Return: 0 or a negative errno.
 */
int __pvf_register_driver(struct pvf_driver *drv, struct module *owner)
{
	drv->driver.bus = &pvf_bus;
	drv->driver.owner = owner;
	return driver_register(&drv->driver);
}
PVF_EXPORT(__pvf_register_driver);

/**
 * pvf_unregister_driver - unregister a pvf_virtio driver
 * @drv: the driver
 */
void pvf_unregister_driver(struct pvf_driver *drv)
{
	driver_unregister(&drv->driver);
}
PVF_EXPORT(pvf_unregister_driver);

/**
 * pvf_register_device - add a device to the pvf_virtio bus
 * @vdev: the device; the transport fills @id, @vendor, @config,
 *	  @dev.parent and @dev.release
 *
 * The device is reset and acknowledged, then added; a matching driver
 * is probed.  After this call (even on failure) release the device with
 * put_device(&vdev->dev).
 *
 * Return: 0 or a negative errno.
 */
int pvf_register_device(struct pvf_device *vdev)
{
	int err;

	device_initialize(&vdev->dev);
	vdev->dev.bus = &pvf_bus;
	INIT_LIST_HEAD(&vdev->vqs);
	spin_lock_init(&vdev->vqs_lock);
	spin_lock_init(&vdev->config_lock);
	INIT_WORK(&vdev->config_work, pvf_config_work);
	vdev->config_enabled = false;
	vdev->config_pending = false;

	err = ida_alloc(&pvf_index_ida, GFP_KERNEL);
	if (err < 0)
		return err;
	vdev->index = err;
	err = dev_set_name(&vdev->dev, "pvf%u", vdev->index);
	if (err)
		goto err_ida;

	pvf_reset_device(vdev);
	pvf_add_status(vdev, VIRTIO_CONFIG_S_ACKNOWLEDGE);

	err = device_add(&vdev->dev);
	if (err)
		goto err_ida;
	return 0;

err_ida:
	ida_free(&pvf_index_ida, vdev->index);
	vdev->index = -1;
	return err;
}
PVF_EXPORT(pvf_register_device);

/**
 * pvf_unregister_device - remove a device from the bus
 * @vdev: the device, registered with pvf_register_device()
 *
 * Unbinds the driver; the caller still holds its reference.
 */
void pvf_unregister_device(struct pvf_device *vdev)
{
	int index = vdev->index;

	device_del(&vdev->dev);
	ida_free(&pvf_index_ida, index);
}
PVF_EXPORT(pvf_unregister_device);

static int __init pvf_virtio_init(void)
{
	return bus_register(&pvf_bus);
}

static void __exit pvf_virtio_exit(void)
{
	bus_unregister(&pvf_bus);
	ida_destroy(&pvf_index_ida);
}

module_init(pvf_virtio_init);
module_exit(pvf_virtio_exit);
