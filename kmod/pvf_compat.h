/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pvf_compat.h - kernel API differences absorbed in one place.
 *
 * pvfront builds against Debian 5.10, 6.1 and 6.12 kernels.  Every
 * LINUX_VERSION_CODE test of the driver family lives in this file; the
 * .c files call the pvf_compat_* helpers and PVF_* macros only.
 */
#ifndef _PVF_COMPAT_H
#define _PVF_COMPAT_H

#include <linux/version.h>
#include <linux/module.h>
#include <linux/device.h>

/* ---- symbol namespaces ------------------------------------------------ */

/*
 * Up to 6.12 EXPORT_SYMBOL_NS_GPL() takes a bare identifier; 6.13 switched to
 * a string literal.  The imports come from modules.toml, in the generated
 * metadata header of each module.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 13, 0)
#define PVF_EXPORT(sym)		EXPORT_SYMBOL_NS_GPL(sym, "PVFRONT")
#else
#define PVF_EXPORT(sym)		EXPORT_SYMBOL_NS_GPL(sym, PVFRONT)
#endif

/* ---- driver_override ------------------------------------------------- */

/*
 * The override string moved from struct pci_dev (and friends) into
 * struct device, with a locked accessor; Debian 6.12.x has the backport.
 */
#ifdef PVF_COMPAT_PCI
#include <linux/pci.h>
#include <linux/string.h>

static inline bool pvf_compat_pci_override_is(struct pci_dev *pci,
					      const char *drv_name)
{
#ifdef PVF_HAVE_DEVICE_DRIVER_OVERRIDE
	bool match;

	/* open-coded device_match_driver_override(): sparse-friendly */
	spin_lock(&pci->dev.driver_override.lock);
	match = pci->dev.driver_override.name &&
		!strcmp(pci->dev.driver_override.name, drv_name);
	spin_unlock(&pci->dev.driver_override.lock);
	return match;
#else
	return pci->driver_override &&
	       !strcmp(pci->driver_override, drv_name);
#endif
}
#endif /* PVF_COMPAT_PCI */

/* ---- bus_type callbacks ----------------------------------------------- */

/* bus_type.match takes a const driver since 6.11 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
#define pvf_bus_match_drv_t	const struct device_driver
#else
#define pvf_bus_match_drv_t	struct device_driver
#endif

/* bus_type.uevent takes a const device since 6.3 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
#define pvf_bus_uevent_dev_t	const struct device
#else
#define pvf_bus_uevent_dev_t	struct device
#endif

/* bus_type.remove returned int before 5.15 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 15, 0)
#define PVF_DEFINE_BUS_REMOVE(wrapper, fn)				\
	static int wrapper(struct device *dev)				\
	{								\
		fn(dev);						\
		return 0;						\
	}
#else
#define PVF_DEFINE_BUS_REMOVE(wrapper, fn)				\
	static void wrapper(struct device *dev)				\
	{								\
		fn(dev);						\
	}
#endif

#ifdef PVF_COMPAT_BLK
/* ---- block layer ------------------------------------------------------ */
#include <linux/blkdev.h>
#include <linux/blk-mq.h>
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 18, 0)
#include <linux/genhd.h>
#endif

/**
 * struct pvf_blk_limits - queue limits, independent of the kernel version
 * @logical_block_size: bytes
 * @physical_block_size: bytes
 * @alignment_offset: bytes
 * @io_min: bytes
 * @io_opt: bytes
 * @max_hw_sectors: 512-byte sectors per request
 * @max_segments: data segments per request
 * @max_segment_size: bytes per segment
 * @max_discard_sectors: 0 disables discard
 * @max_discard_segments: ranges per discard request
 * @discard_granularity: bytes
 * @max_write_zeroes_sectors: 0 disables write zeroes
 * @write_cache: volatile write cache present (flush needed)
 */
struct pvf_blk_limits {
	unsigned int logical_block_size;
	unsigned int physical_block_size;
	unsigned int alignment_offset;
	unsigned int io_min;
	unsigned int io_opt;
	unsigned int max_hw_sectors;
	unsigned short max_segments;
	unsigned int max_segment_size;
	unsigned int max_discard_sectors;
	unsigned short max_discard_segments;
	unsigned int discard_granularity;
	unsigned int max_write_zeroes_sectors;
	bool write_cache;
};

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
/* queue_limits passed at allocation, features as BLK_FEAT_* flags */
static inline struct gendisk *
pvf_compat_alloc_disk(struct blk_mq_tag_set *set,
		      const struct pvf_blk_limits *l, void *data)
{
	struct queue_limits lim = {
		.logical_block_size	= l->logical_block_size,
		.physical_block_size	= l->physical_block_size,
		.alignment_offset	= l->alignment_offset,
		.io_min			= l->io_min,
		.io_opt			= l->io_opt,
		.max_hw_sectors		= l->max_hw_sectors,
		.max_segments		= l->max_segments,
		.max_segment_size	= l->max_segment_size,
		.max_hw_discard_sectors	= l->max_discard_sectors,
		.max_discard_segments	= l->max_discard_segments,
		.discard_granularity	= l->discard_granularity,
		.max_write_zeroes_sectors = l->max_write_zeroes_sectors,
	};

	if (l->write_cache)
		lim.features |= BLK_FEAT_WRITE_CACHE;
	return blk_mq_alloc_disk(set, &lim, data);
}

static inline int pvf_compat_set_write_cache(struct gendisk *disk, bool wc)
{
	struct queue_limits lim = queue_limits_start_update(disk->queue);

	if (wc)
		lim.features |= BLK_FEAT_WRITE_CACHE;
	else
		lim.features &= ~BLK_FEAT_WRITE_CACHE;
	return queue_limits_commit_update(disk->queue, &lim);
}
#else
static inline void pvf_compat_apply_limits(struct request_queue *q,
					   const struct pvf_blk_limits *l)
{
	blk_queue_logical_block_size(q, l->logical_block_size);
	blk_queue_physical_block_size(q, l->physical_block_size);
	blk_queue_alignment_offset(q, l->alignment_offset);
	blk_queue_io_min(q, l->io_min);
	blk_queue_io_opt(q, l->io_opt);
	blk_queue_max_hw_sectors(q, l->max_hw_sectors);
	blk_queue_max_segments(q, l->max_segments);
	blk_queue_max_segment_size(q, l->max_segment_size);
	if (l->max_discard_sectors) {
		blk_queue_max_discard_sectors(q, l->max_discard_sectors);
		blk_queue_max_discard_segments(q, l->max_discard_segments);
		q->limits.discard_granularity = l->discard_granularity;
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 19, 0)
		blk_queue_flag_set(QUEUE_FLAG_DISCARD, q);
#endif
	}
	if (l->max_write_zeroes_sectors)
		blk_queue_max_write_zeroes_sectors(q,
						   l->max_write_zeroes_sectors);
	blk_queue_write_cache(q, l->write_cache, false);
}

static inline int pvf_compat_set_write_cache(struct gendisk *disk, bool wc)
{
	blk_queue_write_cache(disk->queue, wc, false);
	return 0;
}

#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 15, 0)
static inline struct gendisk *
pvf_compat_alloc_disk(struct blk_mq_tag_set *set,
		      const struct pvf_blk_limits *l, void *data)
{
	struct gendisk *disk = blk_mq_alloc_disk(set, data);

	if (!IS_ERR(disk))
		pvf_compat_apply_limits(disk->queue, l);
	return disk;
}
#else
static inline struct gendisk *
pvf_compat_alloc_disk(struct blk_mq_tag_set *set,
		      const struct pvf_blk_limits *l, void *data)
{
	struct request_queue *q;
	struct gendisk *disk;

	disk = alloc_disk(0);
	if (!disk)
		return ERR_PTR(-ENOMEM);
	q = blk_mq_init_queue(set);
	if (IS_ERR(q)) {
		put_disk(disk);
		return ERR_CAST(q);
	}
	q->queuedata = data;
	disk->queue = q;
	pvf_compat_apply_limits(q, l);
	return disk;
}
#endif
#endif

/* device_add_disk() returns an error since 5.15 (__must_check in 6.x) */
static inline int pvf_compat_add_disk(struct device *parent,
				      struct gendisk *disk,
				      const struct attribute_group **groups)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 15, 0)
	return device_add_disk(parent, disk, groups);
#else
	device_add_disk(parent, disk, groups);
	return 0;
#endif
}

/* 5.10 stable got set_capacity_and_notify() late (5.10.262 has it) */
static inline void pvf_compat_set_capacity_notify(struct gendisk *disk,
						  sector_t size)
{
#ifdef PVF_HAVE_SET_CAPACITY_AND_NOTIFY
	set_capacity_and_notify(disk, size);
#else
	set_capacity_revalidate_and_notify(disk, size, true);
#endif
}

/*
 * Remove an added disk and wait for the requests it has in flight, while the
 * device still answers: 5.10's del_gendisk() leaves the queue running (its
 * blk_cleanup_queue() drains it), 6.x's del_gendisk() drains it itself.
 * Resetting the device first would strand those requests for good.
 */
static inline void pvf_compat_del_disk(struct gendisk *disk)
{
	del_gendisk(disk);
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 15, 0)
	blk_cleanup_queue(disk->queue);
#endif
}

/* drop a disk from pvf_compat_alloc_disk() that was never added */
static inline void pvf_compat_put_disk(struct gendisk *disk)
{
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 15, 0)
	blk_cleanup_queue(disk->queue);
#endif
	put_disk(disk);
}

/* run a passthrough request synchronously */
static inline void pvf_compat_execute_rq(struct gendisk *disk,
					 struct request *rq)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 19, 0)
	blk_execute_rq(rq, false);
#else
	blk_execute_rq(disk->queue, disk, rq, 0);
#endif
}

/* blk_mq_ops.timeout lost its "reserved" argument in 5.19 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 19, 0)
#define PVF_DEFINE_BLK_TIMEOUT(wrapper, fn)				\
	static enum blk_eh_timer_return wrapper(struct request *rq)	\
	{								\
		return fn(rq);						\
	}
#else
#define PVF_DEFINE_BLK_TIMEOUT(wrapper, fn)				\
	static enum blk_eh_timer_return wrapper(struct request *rq,	\
						bool reserved)		\
	{								\
		return fn(rq);						\
	}
#endif

/* 6.14 merges requests in every blk-mq queue and drops the flag that asked for it */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 14, 0)
#define PVF_BLK_MQ_F_SHOULD_MERGE 0
#else
#define PVF_BLK_MQ_F_SHOULD_MERGE BLK_MQ_F_SHOULD_MERGE
#endif

/* 6.15 takes the queue from the request in blk_rq_map_sg() */
static inline int pvf_compat_map_sg(struct request *rq, struct scatterlist *sg)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 15, 0)
	return blk_rq_map_sg(rq, sg);
#else
	return blk_rq_map_sg(rq->q, rq, sg);
#endif
}

/* 6.16 does the same in blk_rq_map_kern() */
static inline int pvf_compat_map_kern(struct request *rq, void *buf,
				      unsigned int len, gfp_t gfp)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 16, 0)
	return blk_rq_map_kern(rq, buf, len, gfp);
#else
	return blk_rq_map_kern(rq->q, rq, buf, len, gfp);
#endif
}

/* 6.14: freezing a queue enters a noio scope that unfreezing leaves */
static inline unsigned int pvf_compat_freeze_queue(struct request_queue *q)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 14, 0)
	return blk_mq_freeze_queue(q);
#else
	blk_mq_freeze_queue(q);
	return 0;
#endif
}

static inline void pvf_compat_unfreeze_queue(struct request_queue *q,
					     unsigned int memflags)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 14, 0)
	blk_mq_unfreeze_queue(q, memflags);
#else
	blk_mq_unfreeze_queue(q);
#endif
}

#endif /* PVF_COMPAT_BLK */

#ifdef PVF_COMPAT_NET
/* ---- networking ------------------------------------------------------- */
#include <linux/netdevice.h>

/* struct netdev_rx_queue and its sysfs attributes left netdevice.h in 6.5 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 5, 0)
#include <net/netdev_rx_queue.h>
#endif

/* netif_napi_add() lost its weight argument in 6.1 */
static inline void pvf_compat_napi_add(struct net_device *dev,
				       struct napi_struct *napi,
				       int (*poll)(struct napi_struct *, int))
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 1, 0)
	netif_napi_add(dev, napi, poll);
#else
	netif_napi_add(dev, napi, poll, NAPI_POLL_WEIGHT);
#endif
}
#endif /* PVF_COMPAT_NET */

#endif /* _PVF_COMPAT_H */
