/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pvf_virtio.h - the pvf_virtio bus: devices, drivers and transport ops.
 *
 * This is a bus of its own (named "pvf_virtio"), separate from the
 * kernel's virtio bus, so pvfront drivers never meet in-tree ones.
 */
#ifndef _PVF_VIRTIO_H
#define _PVF_VIRTIO_H

#include <linux/device.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>
#include <linux/bits.h>
#include <uapi/linux/virtio_config.h>
#include <uapi/linux/virtio_ring.h>
#include <uapi/linux/virtio_ids.h>
#include "pvf_ring.h"

struct pvf_device;

/**
 * struct pvf_vq_info - what a driver asks for, per virtqueue
 * @name: queue name (must stay valid while the queue exists)
 * @callback: used-buffer callback, or NULL
 */
struct pvf_vq_info {
	const char *name;
	pvf_vq_callback_t callback;
};

/**
 * struct pvf_config_ops - transport operations
 * @get: read @len bytes of device config at @offset, little-endian
 * @set: write @len bytes of device config at @offset, little-endian
 * @generation: config generation counter
 * @get_status: read the device status byte
 * @set_status: write a non-zero device status byte
 * @reset: reset the device and wait until the reset completed; also
 *	waits for running queue and config interrupt handlers
 * @get_features: the 64 feature bits the device offers
 * @finalize_features: write @pvf_device.features to the device
 * @find_vqs: set up @nvqs queues with interrupts, and enable them
 * @del_vqs: free all queues and interrupts (device must be reset)
 * @is_present: false once the device is known to be gone
 * @synchronize_cbs: wait for running queue and config interrupt handlers,
 *	so that they see a state written before the call (e.g. broken)
 */
struct pvf_config_ops {
	void (*get)(struct pvf_device *vdev, unsigned int offset,
		    void *buf, unsigned int len);
	void (*set)(struct pvf_device *vdev, unsigned int offset,
		    const void *buf, unsigned int len);
	u32 (*generation)(struct pvf_device *vdev);
	u8 (*get_status)(struct pvf_device *vdev);
	void (*set_status)(struct pvf_device *vdev, u8 status);
	void (*reset)(struct pvf_device *vdev);
	u64 (*get_features)(struct pvf_device *vdev);
	int (*finalize_features)(struct pvf_device *vdev);
	int (*find_vqs)(struct pvf_device *vdev, unsigned int nvqs,
			struct pvf_virtqueue *vqs[],
			const struct pvf_vq_info info[]);
	void (*del_vqs)(struct pvf_device *vdev);
	bool (*is_present)(struct pvf_device *vdev);
	void (*synchronize_cbs)(struct pvf_device *vdev);
};

/**
 * struct pvf_device - a virtio device on the pvf_virtio bus
 * @dev: driver-model device; the transport owns its release()
 * @index: unique index, the device is named "pvf<index>"
 * @id: virtio device id (VIRTIO_ID_NET, VIRTIO_ID_BLOCK, ...)
 * @vendor: vendor id reported by the transport
 * @features: negotiated features
 * @config: transport operations
 * @vqs: virtqueues of the device
 * @vqs_lock: protects @vqs
 * @broken: device broken, all queues refuse work
 * @config_lock: protects @config_enabled and @config_pending
 * @config_enabled: config-change callbacks allowed
 * @config_pending: a change arrived while callbacks were disabled
 * @config_work: runs the driver's config_changed() in process context
 * @failed: FAILED was set when the device was frozen (restored on resume)
 * @priv: driver private data
 */
struct pvf_device {
	struct device dev;
	int index;
	u32 id;
	u32 vendor;
	u64 features;
	const struct pvf_config_ops *config;
	struct list_head vqs;
	spinlock_t vqs_lock;
	bool broken;
	spinlock_t config_lock;
	bool config_enabled;
	bool config_pending;
	struct work_struct config_work;
	bool failed;
	void *priv;
};

/**
 * struct pvf_driver - a driver on the pvf_virtio bus
 * @driver: driver-model driver
 * @id_table: virtio device ids handled, terminated by 0
 * @feature_table: feature bits the driver understands
 * @feature_table_size: entries in @feature_table
 * @validate: before FEATURES_OK, may clear feature bits in
 *	&pvf_device.features whose config values it cannot use; an error fails
 *	the probe
 * @probe: bind to a device whose features are negotiated (FEATURES_OK)
 * @remove: unbind; must reset the device and delete its queues
 * @config_changed: device configuration changed (process context)
 * @freeze: before suspend or hibernation: stop using the device, reset it
 *	and delete its queues (the bus has disabled config changes)
 * @restore: after resume: the bus has reset the device and negotiated the
 *	same features again (FEATURES_OK); rebuild the queues and start I/O
 * @shutdown: reboot, kexec or power-off: stop the device doing DMA; if
 *	absent the bus breaks the device, synchronises its callbacks and
 *	resets it
 */
struct pvf_driver {
	struct device_driver driver;
	const u32 *id_table;
	const unsigned int *feature_table;
	unsigned int feature_table_size;
	int (*validate)(struct pvf_device *vdev);
	int (*probe)(struct pvf_device *vdev);
	void (*remove)(struct pvf_device *vdev);
	void (*config_changed)(struct pvf_device *vdev);
	int (*freeze)(struct pvf_device *vdev);
	int (*restore)(struct pvf_device *vdev);
	void (*shutdown)(struct pvf_device *vdev);
};

static inline struct pvf_device *dev_to_pvf(struct device *dev)
{
	return container_of(dev, struct pvf_device, dev);
}

static inline struct pvf_driver *drv_to_pvf(const struct device_driver *drv)
{
	return container_of(drv, struct pvf_driver, driver);
}

int pvf_register_device(struct pvf_device *vdev);
void pvf_unregister_device(struct pvf_device *vdev);
int __pvf_register_driver(struct pvf_driver *drv, struct module *owner);
void pvf_unregister_driver(struct pvf_driver *drv);
void pvf_device_ready(struct pvf_device *vdev);
int pvf_device_restart(struct pvf_device *vdev);
void pvf_config_changed(struct pvf_device *vdev);
void pvf_break_device(struct pvf_device *vdev);
int pvf_device_freeze(struct pvf_device *vdev);
int pvf_device_restore(struct pvf_device *vdev);
void pvf_cread_bytes(struct pvf_device *vdev, unsigned int offset,
		     void *buf, unsigned int len);

#define pvf_register_driver(drv) __pvf_register_driver(drv, THIS_MODULE)

#define module_pvf_driver(__drv) \
	module_driver(__drv, pvf_register_driver, pvf_unregister_driver)

static inline bool pvf_has_feature(const struct pvf_device *vdev,
				   unsigned int fbit)
{
	return vdev->features & BIT_ULL(fbit);
}

static inline bool pvf_device_is_broken(const struct pvf_device *vdev)
{
	return READ_ONCE(vdev->broken);
}

static inline void pvf_reset_device(struct pvf_device *vdev)
{
	vdev->config->reset(vdev);
}

static inline int pvf_find_vqs(struct pvf_device *vdev, unsigned int nvqs,
			       struct pvf_virtqueue *vqs[],
			       const struct pvf_vq_info info[])
{
	return vdev->config->find_vqs(vdev, nvqs, vqs, info);
}

static inline void pvf_del_vqs(struct pvf_device *vdev)
{
	vdev->config->del_vqs(vdev);
}

static inline u8 pvf_cread8(struct pvf_device *vdev, unsigned int offset)
{
	u8 v;

	pvf_cread_bytes(vdev, offset, &v, sizeof(v));
	return v;
}

static inline u16 pvf_cread16(struct pvf_device *vdev, unsigned int offset)
{
	__le16 v;

	pvf_cread_bytes(vdev, offset, &v, sizeof(v));
	return le16_to_cpu(v);
}

static inline u32 pvf_cread32(struct pvf_device *vdev, unsigned int offset)
{
	__le32 v;

	pvf_cread_bytes(vdev, offset, &v, sizeof(v));
	return le32_to_cpu(v);
}

static inline u64 pvf_cread64(struct pvf_device *vdev, unsigned int offset)
{
	__le64 v;

	pvf_cread_bytes(vdev, offset, &v, sizeof(v));
	return le64_to_cpu(v);
}

static inline void pvf_cwrite8(struct pvf_device *vdev, unsigned int offset,
			       u8 v)
{
	vdev->config->set(vdev, offset, &v, sizeof(v));
}

/* read a config field, sized as in the uapi config struct */
#define pvf_cread_member(vdev, type, member)				\
	(sizeof_field(type, member) == 1 ?				\
		pvf_cread8(vdev, offsetof(type, member)) :		\
	 sizeof_field(type, member) == 2 ?				\
		pvf_cread16(vdev, offsetof(type, member)) :		\
	 sizeof_field(type, member) == 4 ?				\
		pvf_cread32(vdev, offsetof(type, member)) :		\
		pvf_cread64(vdev, offsetof(type, member)))

/* read a config field if its feature was negotiated, else keep *ptr */
#define pvf_cread_feature(vdev, fbit, type, member, ptr)		\
	do {								\
		if (pvf_has_feature(vdev, fbit))			\
			*(ptr) = pvf_cread_member(vdev, type, member);	\
	} while (0)

#endif /* _PVF_VIRTIO_H */
