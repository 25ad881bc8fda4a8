// SPDX-License-Identifier: GPL-2.0
/*
 * pvf_blk.c - virtio block driver on the pvf_virtio bus
 *
 * One blk-mq hardware queue per virtqueue.  Disks are named pvda, pvdb,
 * ... so they never clash with the in-tree virtio_blk's vd* names.
 */
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/idr.h>
#include <linux/scatterlist.h>
#include <uapi/linux/virtio_blk.h>
#define PVF_COMPAT_BLK
#include "pvf_compat.h"
#include "pvf_virtio.h"

#define PVF_BLK_MINORS		16
#define PVF_BLK_MAX_SEGS	128
#define PVF_BLK_MAX_DISCARD_SEGS 32
#define PVF_BLK_ID_LEN		20	/* VIRTIO_BLK_ID_BYTES */
#define PVF_BLK_STATUS_NONE	0xff	/* device did not write a status */

static unsigned int num_queues;
module_param(num_queues, uint, 0444);
MODULE_PARM_DESC(num_queues,
		 "Max request queues per disk with VIRTIO_BLK_F_MQ (default: 0 = one per CPU)");

static unsigned int queue_depth = 128;
module_param(queue_depth, uint, 0444);
MODULE_PARM_DESC(queue_depth, "Requests per hardware queue (default: 128)");

static int pvf_blk_major;
static DEFINE_IDA(pvf_blk_ida);

/* request header, little-endian (VIRTIO 1.x 5.2.6) */
struct pvf_blk_outhdr {
	__le32 type;
	__le32 ioprio;
	__le64 sector;
};

/* discard / write-zeroes range */
struct pvf_blk_range {
	__le64 sector;
	__le32 num_sectors;
	__le32 flags;
};

struct pvf_blk_vq {
	struct pvf_virtqueue *vq;
	spinlock_t lock;
	char name[16];
} ____cacheline_aligned_in_smp;

struct pvf_blk {
	struct pvf_device *vdev;
	struct gendisk *disk;
	struct blk_mq_tag_set tag_set;
	int index;
	unsigned int nvqs;
	struct pvf_blk_vq *vqs;
	struct work_struct fail_work;
	bool failed_inflight;
};

struct pvf_blk_req {
	struct pvf_blk_outhdr hdr;
	u8 status;
	struct pvf_blk_range *range;
	struct scatterlist sg[];
};

static const u32 pvf_blk_id_table[] = { VIRTIO_ID_BLOCK, 0 };

static const unsigned int pvf_blk_features[] = {
	VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_RO,
	VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_TOPOLOGY,
	VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_DISCARD,
	VIRTIO_BLK_F_WRITE_ZEROES,
};

#define pvf_blk_cread(vdev, member) \
	pvf_cread_member(vdev, struct virtio_blk_config, member)

static blk_status_t pvf_blk_status(u8 status)
{
	switch (status) {
	case VIRTIO_BLK_S_OK:
		return BLK_STS_OK;
	case VIRTIO_BLK_S_UNSUPP:
		return BLK_STS_NOTSUPP;
	default:
		return BLK_STS_IOERR;
	}
}

/* ---- request submission ------------------------------------------------ */

static int pvf_blk_setup_range(struct request *req, struct pvf_blk_req *br,
			       bool unmap)
{
	unsigned short n = blk_rq_nr_discard_segments(req);
	u32 flags = unmap ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;
	struct bio *bio;
	unsigned int i = 0;

	br->range = kmalloc_array(n, sizeof(*br->range), GFP_ATOMIC);
	if (!br->range)
		return -ENOMEM;

	if (n == 1) {
		/* one range, possibly built from contiguous bios */
		br->range[0].sector = cpu_to_le64(blk_rq_pos(req));
		br->range[0].num_sectors = cpu_to_le32(blk_rq_sectors(req));
		br->range[0].flags = cpu_to_le32(flags);
		return 1;
	}
	__rq_for_each_bio(bio, req) {
		if (WARN_ON_ONCE(i >= n))
			break;
		br->range[i].sector = cpu_to_le64(bio->bi_iter.bi_sector);
		br->range[i].num_sectors =
			cpu_to_le32(bio->bi_iter.bi_size >> SECTOR_SHIFT);
		br->range[i].flags = cpu_to_le32(flags);
		i++;
	}
	return i;
}

static int pvf_blk_type(struct request *req, u32 *type)
{
	switch (req_op(req)) {
	case REQ_OP_READ:
		*type = VIRTIO_BLK_T_IN;
		break;
	case REQ_OP_WRITE:
		*type = VIRTIO_BLK_T_OUT;
		break;
	case REQ_OP_FLUSH:
		*type = VIRTIO_BLK_T_FLUSH;
		break;
	case REQ_OP_DISCARD:
		*type = VIRTIO_BLK_T_DISCARD;
		break;
	case REQ_OP_WRITE_ZEROES:
		*type = VIRTIO_BLK_T_WRITE_ZEROES;
		break;
	case REQ_OP_DRV_IN:
		*type = VIRTIO_BLK_T_GET_ID;
		break;
	default:
		return -EOPNOTSUPP;
	}
	return 0;
}

static blk_status_t pvf_blk_queue_rq(struct blk_mq_hw_ctx *hctx,
				     const struct blk_mq_queue_data *bd)
{
	struct pvf_blk *vblk = hctx->queue->queuedata;
	struct pvf_blk_vq *bvq = &vblk->vqs[hctx->queue_num];
	struct request *req = bd->rq;
	struct pvf_blk_req *br = blk_mq_rq_to_pdu(req);
	struct scatterlist hdr, status, data, *sgs[3];
	unsigned int out = 1, in = 0, nents = 0;
	unsigned long flags;
	bool notify;
	u32 type;
	int err;

	if (unlikely(pvf_device_is_broken(vblk->vdev)))
		return BLK_STS_IOERR;
	if (pvf_blk_type(req, &type))
		return BLK_STS_NOTSUPP;

	br->hdr.type = cpu_to_le32(type);
	br->hdr.ioprio = cpu_to_le32(req_get_ioprio(req));
	br->hdr.sector = cpu_to_le64(type == VIRTIO_BLK_T_IN ||
				     type == VIRTIO_BLK_T_OUT ?
				     blk_rq_pos(req) : 0);
	br->status = PVF_BLK_STATUS_NONE;
	br->range = NULL;
	sg_init_one(&hdr, &br->hdr, sizeof(br->hdr));
	sgs[0] = &hdr;

	if (type == VIRTIO_BLK_T_DISCARD || type == VIRTIO_BLK_T_WRITE_ZEROES) {
		err = pvf_blk_setup_range(req, br,
					  type == VIRTIO_BLK_T_WRITE_ZEROES &&
					  !(req->cmd_flags & REQ_NOUNMAP));
		if (err < 0)
			return BLK_STS_RESOURCE;
		sg_init_one(&data, br->range, err * sizeof(*br->range));
		sgs[out++] = &data;
	} else if (blk_rq_nr_phys_segments(req)) {
		/* clearing the whole table for every small request is wasted work */
		sg_init_table(br->sg, blk_rq_nr_phys_segments(req));
		nents = pvf_compat_map_sg(req, br->sg);
		if (nents) {
			if (type == VIRTIO_BLK_T_OUT)
				sgs[out++] = br->sg;
			else
				sgs[out + in++] = br->sg;
		}
	}
	sg_init_one(&status, &br->status, sizeof(br->status));
	sgs[out + in++] = &status;

	blk_mq_start_request(req);

	spin_lock_irqsave(&bvq->lock, flags);
	err = pvf_vq_add_sgs(bvq->vq, sgs, out, in, req, GFP_ATOMIC);
	if (err) {
		pvf_vq_kick(bvq->vq);
		/*
		 * Ring full: stop under the queue lock, so the completion
		 * that frees room (it takes the lock) restarts us.
		 */
		if (err == -ENOSPC)
			blk_mq_stop_hw_queue(hctx);
		spin_unlock_irqrestore(&bvq->lock, flags);
		kfree(br->range);
		br->range = NULL;
		if (err == -ENOSPC)
			return BLK_STS_DEV_RESOURCE;
		if (err == -ENOMEM)
			return BLK_STS_RESOURCE;
		return BLK_STS_IOERR;
	}
	notify = bd->last && pvf_vq_kick_prepare(bvq->vq);
	spin_unlock_irqrestore(&bvq->lock, flags);

	if (notify)
		pvf_vq_notify(bvq->vq);
	return BLK_STS_OK;
}

static void pvf_blk_commit_rqs(struct blk_mq_hw_ctx *hctx)
{
	struct pvf_blk *vblk = hctx->queue->queuedata;
	struct pvf_blk_vq *bvq = &vblk->vqs[hctx->queue_num];
	unsigned long flags;
	bool notify;

	spin_lock_irqsave(&bvq->lock, flags);
	notify = pvf_vq_kick_prepare(bvq->vq);
	spin_unlock_irqrestore(&bvq->lock, flags);
	if (notify)
		pvf_vq_notify(bvq->vq);
}

/* ---- completion -------------------------------------------------------- */

static void pvf_blk_complete(struct request *req)
{
	struct pvf_blk_req *br = blk_mq_rq_to_pdu(req);

	kfree(br->range);
	br->range = NULL;
	blk_mq_end_request(req, pvf_blk_status(br->status));
}

static void pvf_blk_done(struct pvf_virtqueue *vq)
{
	struct pvf_blk *vblk = vq->vdev->priv;
	struct pvf_blk_vq *bvq = &vblk->vqs[vq->index];
	bool done = false, broken;
	struct request *req;
	unsigned long flags;
	unsigned int len;

	spin_lock_irqsave(&bvq->lock, flags);
	do {
		pvf_vq_disable_cb(vq);
		while ((req = pvf_vq_get_buf(vq, &len)) != NULL) {
			blk_mq_complete_request(req);
			done = true;
		}
		broken = pvf_vq_is_broken(vq);
	} while (!broken && !pvf_vq_enable_cb(vq));
	spin_unlock_irqrestore(&bvq->lock, flags);

	if (done && vblk->disk)
		blk_mq_start_stopped_hw_queues(vblk->disk->queue, true);
	if (unlikely(broken))
		schedule_work(&vblk->fail_work);
}

/*
 * The device is broken (bad used ring, gone, or needs reset): stop it so
 * it cannot DMA any more, then fail everything that was in flight.
 */
static void pvf_blk_fail_inflight(struct pvf_blk *vblk)
{
	struct pvf_blk_req *br;
	struct request *req;
	unsigned long flags;
	unsigned int i, n = 0;

	pvf_break_device(vblk->vdev);
	pvf_reset_device(vblk->vdev);
	for (i = 0; i < vblk->nvqs; i++) {
		struct pvf_blk_vq *bvq = &vblk->vqs[i];

		spin_lock_irqsave(&bvq->lock, flags);
		while ((req = pvf_vq_detach_unused_buf(bvq->vq)) != NULL) {
			br = blk_mq_rq_to_pdu(req);
			br->status = VIRTIO_BLK_S_IOERR;
			blk_mq_complete_request(req);
			n++;
		}
		spin_unlock_irqrestore(&bvq->lock, flags);
	}
	if (n)
		dev_err(&vblk->vdev->dev, "failed %u requests in flight\n", n);
	if (vblk->disk)
		blk_mq_start_stopped_hw_queues(vblk->disk->queue, true);
}

static void pvf_blk_fail_work(struct work_struct *work)
{
	pvf_blk_fail_inflight(container_of(work, struct pvf_blk, fail_work));
}

static enum blk_eh_timer_return pvf_blk_do_timeout(struct request *req)
{
	struct pvf_blk *vblk = req->q->queuedata;
	struct pvf_device *vdev = vblk->vdev;

	if (!pvf_device_is_broken(vdev) && !vdev->config->is_present(vdev)) {
		dev_err(&vdev->dev, "device gone, failing I/O\n");
		pvf_break_device(vdev);
	}
	if (pvf_device_is_broken(vdev))
		schedule_work(&vblk->fail_work);
	/* virtio has no abort: keep waiting for a live device */
	return BLK_EH_RESET_TIMER;
}

PVF_DEFINE_BLK_TIMEOUT(pvf_blk_timeout, pvf_blk_do_timeout)

static const struct blk_mq_ops pvf_blk_mq_ops = {
	.queue_rq	= pvf_blk_queue_rq,
	.commit_rqs	= pvf_blk_commit_rqs,
	.complete	= pvf_blk_complete,
	.timeout	= pvf_blk_timeout,
};

static const struct block_device_operations pvf_blk_fops = {
	.owner		= THIS_MODULE,
};

/* ---- sysfs: serial ----------------------------------------------------- */

static int pvf_blk_get_id(struct gendisk *disk, char *id)
{
	struct request_queue *q = disk->queue;
	struct pvf_blk_req *br;
	struct request *req;
	int err;

	req = blk_mq_alloc_request(q, REQ_OP_DRV_IN, 0);
	if (IS_ERR(req))
		return PTR_ERR(req);
	err = pvf_compat_map_kern(req, id, PVF_BLK_ID_LEN, GFP_KERNEL);
	if (err)
		goto out;
	pvf_compat_execute_rq(disk, req);
	br = blk_mq_rq_to_pdu(req);
	err = blk_status_to_errno(pvf_blk_status(br->status));
out:
	blk_mq_free_request(req);
	return err;
}

static ssize_t serial_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	struct gendisk *disk = dev_to_disk(dev);
	char *id;
	int err;

	/* DMA target: not the sysfs page, which may be vmalloc'ed */
	id = kzalloc(PVF_BLK_ID_LEN + 1, GFP_KERNEL);
	if (!id)
		return -ENOMEM;
	err = pvf_blk_get_id(disk, id);
	if (!err)
		err = sprintf(buf, "%s\n", id);
	kfree(id);
	return err;
}
static DEVICE_ATTR_RO(serial);

static struct attribute *pvf_blk_attrs[] = {
	&dev_attr_serial.attr,
	NULL,
};

static const struct attribute_group pvf_blk_attr_group = {
	.attrs = pvf_blk_attrs,
};

static const struct attribute_group *pvf_blk_attr_groups[] = {
	&pvf_blk_attr_group,
	NULL,
};

/* ---- setup ------------------------------------------------------------- */

static int pvf_blk_init_vqs(struct pvf_blk *vblk)
{
	struct pvf_device *vdev = vblk->vdev;
	struct pvf_virtqueue **vqs;
	struct pvf_vq_info *info;
	unsigned int i, n = 1;
	int err = -ENOMEM;

	if (pvf_has_feature(vdev, VIRTIO_BLK_F_MQ))
		n = pvf_blk_cread(vdev, num_queues);
	n = clamp_t(unsigned int, n, 1, nr_cpu_ids);
	if (num_queues)
		n = min(n, num_queues);

	vblk->vqs = kcalloc(n, sizeof(*vblk->vqs), GFP_KERNEL);
	vqs = kcalloc(n, sizeof(*vqs), GFP_KERNEL);
	info = kcalloc(n, sizeof(*info), GFP_KERNEL);
	if (!vblk->vqs || !vqs || !info)
		goto out;

	for (i = 0; i < n; i++) {
		spin_lock_init(&vblk->vqs[i].lock);
		snprintf(vblk->vqs[i].name, sizeof(vblk->vqs[i].name),
			 "req.%u", i);
		info[i].name = vblk->vqs[i].name;
		info[i].callback = pvf_blk_done;
	}
	err = pvf_find_vqs(vdev, n, vqs, info);
	if (err)
		goto out;
	for (i = 0; i < n; i++)
		vblk->vqs[i].vq = vqs[i];
	vblk->nvqs = n;
out:
	kfree(info);
	kfree(vqs);
	if (err) {
		kfree(vblk->vqs);
		vblk->vqs = NULL;
	}
	return err;
}

static bool pvf_blk_write_cache(struct pvf_device *vdev)
{
	if (!pvf_has_feature(vdev, VIRTIO_BLK_F_FLUSH))
		return false;
	if (pvf_has_feature(vdev, VIRTIO_BLK_F_CONFIG_WCE))
		return pvf_blk_cread(vdev, wce);
	return true;
}

/*
 * The device's limits; a block size the block layer cannot take (not a
 * power of two in [512, PAGE_SIZE]) fails the probe, as in-tree: serving
 * such a disk with another block size would misplace every write.
 */
static int pvf_blk_read_limits(struct pvf_blk *vblk,
			       struct pvf_blk_limits *lim)
{
	struct pvf_device *vdev = vblk->vdev;
	unsigned int segs = 1, size_max = U32_MAX, bs = SECTOR_SIZE;
	unsigned int vring_size = pvf_vq_size(vblk->vqs[0].vq);
	u8 pexp = 0, align = 0;
	u16 min_io = 0;
	u32 opt_io = 0;

	pvf_cread_feature(vdev, VIRTIO_BLK_F_SEG_MAX, struct virtio_blk_config,
			  seg_max, &segs);
	pvf_cread_feature(vdev, VIRTIO_BLK_F_SIZE_MAX,
			  struct virtio_blk_config, size_max, &size_max);
	pvf_cread_feature(vdev, VIRTIO_BLK_F_BLK_SIZE,
			  struct virtio_blk_config, blk_size, &bs);

	/* header and status take two descriptors without indirect ones */
	if (!pvf_has_feature(vdev, VIRTIO_RING_F_INDIRECT_DESC))
		segs = min(segs, vring_size - 2);
	segs = clamp_t(unsigned int, segs, 1, PVF_BLK_MAX_SEGS);
	if (!size_max)
		size_max = U32_MAX;
	size_max = min_t(size_t, size_max,
			 pvf_vq_max_mapping_size(vblk->vqs[0].vq));
	size_max = max_t(unsigned int, size_max, PAGE_SIZE);
	if (bs < SECTOR_SIZE || bs > PAGE_SIZE || !is_power_of_2(bs)) {
		dev_err(&vdev->dev, "invalid block size %u, not binding\n",
			bs);
		return -EINVAL;
	}

	memset(lim, 0, sizeof(*lim));
	lim->logical_block_size = bs;
	lim->physical_block_size = bs;
	lim->max_segments = segs;
	lim->max_segment_size = size_max;
	lim->max_hw_sectors = 2048;
	lim->write_cache = pvf_blk_write_cache(vdev);

	if (pvf_has_feature(vdev, VIRTIO_BLK_F_TOPOLOGY)) {
		pexp = pvf_blk_cread(vdev, physical_block_exp);
		align = pvf_blk_cread(vdev, alignment_offset);
		min_io = pvf_blk_cread(vdev, min_io_size);
		opt_io = pvf_blk_cread(vdev, opt_io_size);
		if (pexp < 16)
			lim->physical_block_size = bs << pexp;
		lim->alignment_offset = bs * align;
		lim->io_min = bs * min_io;
		lim->io_opt = bs * opt_io;
	}

	if (pvf_has_feature(vdev, VIRTIO_BLK_F_DISCARD)) {
		u32 sectors = pvf_blk_cread(vdev, max_discard_sectors);
		u32 nseg = pvf_blk_cread(vdev, max_discard_seg);
		u32 align_sec = pvf_blk_cread(vdev, discard_sector_alignment);

		lim->max_discard_sectors = sectors ? sectors : U32_MAX;
		lim->max_discard_segments =
			clamp_t(u32, nseg, 1, PVF_BLK_MAX_DISCARD_SEGS);
		lim->discard_granularity = align_sec ?
			align_sec << SECTOR_SHIFT : bs;
	}
	if (pvf_has_feature(vdev, VIRTIO_BLK_F_WRITE_ZEROES)) {
		u32 sectors = pvf_blk_cread(vdev, max_write_zeroes_sectors);

		/* 0 means no limit of the device's own, as for discard */
		lim->max_write_zeroes_sectors = sectors ? sectors : U32_MAX;
	}
	return 0;
}

static void pvf_blk_name(int index, char *buf, size_t len)
{
	if (index < 26)
		snprintf(buf, len, "pvd%c", 'a' + index);
	else
		snprintf(buf, len, "pvd%c%c", 'a' + index / 26 - 1,
			 'a' + index % 26);
}

static void pvf_blk_config_changed(struct pvf_device *vdev)
{
	struct pvf_blk *vblk = vdev->priv;
	u64 capacity;

	if (pvf_device_is_broken(vdev)) {
		schedule_work(&vblk->fail_work);
		return;
	}
	capacity = pvf_blk_cread(vdev, capacity);
	if (capacity != get_capacity(vblk->disk)) {
		dev_info(&vdev->dev, "%s: capacity %llu -> %llu sectors\n",
			 vblk->disk->disk_name,
			 (unsigned long long)get_capacity(vblk->disk),
			 (unsigned long long)capacity);
		pvf_compat_set_capacity_notify(vblk->disk, capacity);
	}
	if (pvf_has_feature(vdev, VIRTIO_BLK_F_CONFIG_WCE))
		pvf_compat_set_write_cache(vblk->disk,
					   pvf_blk_write_cache(vdev));
}

static int pvf_blk_probe(struct pvf_device *vdev)
{
	struct pvf_blk_limits lim;
	struct pvf_blk *vblk;
	struct gendisk *disk;
	int err;

	vblk = kzalloc(sizeof(*vblk), GFP_KERNEL);
	if (!vblk)
		return -ENOMEM;
	vblk->vdev = vdev;
	vdev->priv = vblk;
	INIT_WORK(&vblk->fail_work, pvf_blk_fail_work);

	err = ida_alloc_max(&pvf_blk_ida, 26 * 27 - 1, GFP_KERNEL);
	if (err < 0)
		goto err_free;
	vblk->index = err;

	err = pvf_blk_init_vqs(vblk);
	if (err)
		goto err_ida;

	vblk->tag_set.ops = &pvf_blk_mq_ops;
	vblk->tag_set.nr_hw_queues = vblk->nvqs;
	vblk->tag_set.queue_depth = clamp_t(unsigned int, queue_depth, 1,
					    pvf_vq_size(vblk->vqs[0].vq));
	vblk->tag_set.numa_node = NUMA_NO_NODE;
	vblk->tag_set.flags = PVF_BLK_MQ_F_SHOULD_MERGE;
	vblk->tag_set.cmd_size = sizeof(struct pvf_blk_req) +
				 sizeof(struct scatterlist) * PVF_BLK_MAX_SEGS;
	vblk->tag_set.driver_data = vblk;
	err = blk_mq_alloc_tag_set(&vblk->tag_set);
	if (err)
		goto err_vqs;

	err = pvf_blk_read_limits(vblk, &lim);
	if (err)
		goto err_tags;
	disk = pvf_compat_alloc_disk(&vblk->tag_set, &lim, vblk);
	if (IS_ERR(disk)) {
		err = PTR_ERR(disk);
		goto err_tags;
	}
	vblk->disk = disk;
	disk->major = pvf_blk_major;
	disk->first_minor = vblk->index * PVF_BLK_MINORS;
	disk->minors = PVF_BLK_MINORS;
	disk->fops = &pvf_blk_fops;
	disk->private_data = vblk;
	pvf_blk_name(vblk->index, disk->disk_name, sizeof(disk->disk_name));
	set_capacity(disk, pvf_blk_cread(vdev, capacity));
	if (pvf_has_feature(vdev, VIRTIO_BLK_F_RO))
		set_disk_ro(disk, 1);

	/* requests may flow as soon as the disk is added */
	pvf_device_ready(vdev);
	err = pvf_compat_add_disk(&vdev->dev, disk, pvf_blk_attr_groups);
	if (err)
		goto err_disk;

	dev_info(&vdev->dev,
		 "%s: %llu sectors, %u queue(s), block size %u%s%s%s%s\n",
		 disk->disk_name, (unsigned long long)get_capacity(disk),
		 vblk->nvqs, lim.logical_block_size,
		 lim.write_cache ? ", write cache" : "",
		 lim.max_discard_sectors ? ", discard" : "",
		 lim.max_write_zeroes_sectors ? ", write-zeroes" : "",
		 pvf_has_feature(vdev, VIRTIO_BLK_F_RO) ? ", read-only" : "");
	return 0;

err_disk:
	pvf_reset_device(vdev);
	cancel_work_sync(&vblk->fail_work);
	vblk->disk = NULL;
	pvf_compat_put_disk(disk);
err_tags:
	blk_mq_free_tag_set(&vblk->tag_set);
err_vqs:
	pvf_reset_device(vdev);
	cancel_work_sync(&vblk->fail_work);
	pvf_del_vqs(vdev);
	kfree(vblk->vqs);
err_ida:
	ida_free(&pvf_blk_ida, vblk->index);
err_free:
	kfree(vblk);
	vdev->priv = NULL;
	return err;
}

static void pvf_blk_remove(struct pvf_device *vdev)
{
	struct pvf_blk *vblk = vdev->priv;

	/* a dead device would make del_gendisk() wait forever */
	if (pvf_device_is_broken(vdev) || !vdev->config->is_present(vdev))
		pvf_blk_fail_inflight(vblk);
	pvf_compat_del_disk(vblk->disk);
	pvf_reset_device(vdev);
	flush_work(&vblk->fail_work);
	pvf_del_vqs(vdev);
	put_disk(vblk->disk);
	blk_mq_free_tag_set(&vblk->tag_set);
	ida_free(&pvf_blk_ida, vblk->index);
	kfree(vblk->vqs);
	kfree(vblk);
	vdev->priv = NULL;
}

#ifdef CONFIG_PM_SLEEP
/*
 * Suspend or hibernation, as drivers/block/virtio_blk.c virtblk_freeze()
 * (6.12): freezing the queue waits for every request in flight to end;
 * quiescing it before the unfreeze keeps new ones queued in blk-mq, not
 * dispatched to queues about to go away, until pvf_blk_restore().
 */
static int pvf_blk_freeze(struct pvf_device *vdev)
{
	struct pvf_blk *vblk = vdev->priv;
	struct request_queue *q = vblk->disk->queue;
	unsigned int memflags;

	memflags = pvf_compat_freeze_queue(q);
	blk_mq_quiesce_queue_nowait(q);
	pvf_compat_unfreeze_queue(q, memflags);

	/* no more interrupts, then nobody left using the queues */
	pvf_reset_device(vdev);
	flush_work(&vblk->fail_work);
	pvf_del_vqs(vdev);
	kfree(vblk->vqs);
	vblk->vqs = NULL;
	return 0;
}

/*
 * As many queues as the tag set was made for, then dispatch again.  If the
 * device cannot be brought back, what waits fails instead of waiting for
 * ever (and removal finds no queues to drain).
 */
static int pvf_blk_restore(struct pvf_device *vdev)
{
	struct pvf_blk *vblk = vdev->priv;
	struct request_queue *q = vblk->disk->queue;
	int err;

	err = pvf_blk_init_vqs(vblk);
	if (!err && vblk->nvqs != vblk->tag_set.nr_hw_queues) {
		dev_err(&vdev->dev, "%u queues after resume, %u before\n",
			vblk->nvqs, vblk->tag_set.nr_hw_queues);
		pvf_reset_device(vdev);
		pvf_del_vqs(vdev);
		kfree(vblk->vqs);
		vblk->vqs = NULL;
		err = -EIO;
	}
	if (err) {
		vblk->nvqs = 0;
		pvf_break_device(vdev);
		blk_mq_unquiesce_queue(q);
		return err;
	}
	pvf_device_ready(vdev);
	blk_mq_unquiesce_queue(q);
	return 0;
}
#endif /* CONFIG_PM_SLEEP */

static struct pvf_driver pvf_blk_driver = {
	.driver.name		= "pvf_blk",
	.id_table		= pvf_blk_id_table,
	.feature_table		= pvf_blk_features,
	.feature_table_size	= ARRAY_SIZE(pvf_blk_features),
	.probe			= pvf_blk_probe,
	.remove			= pvf_blk_remove,
	.config_changed		= pvf_blk_config_changed,
#ifdef CONFIG_PM_SLEEP
	.freeze			= pvf_blk_freeze,
	.restore		= pvf_blk_restore,
#endif
};

static int __init pvf_blk_init(void)
{
	int err;

	pvf_blk_major = register_blkdev(0, "pvd");
	if (pvf_blk_major < 0)
		return pvf_blk_major;
	err = pvf_register_driver(&pvf_blk_driver);
	if (err)
		unregister_blkdev(pvf_blk_major, "pvd");
	return err;
}

static void __exit pvf_blk_exit(void)
{
	pvf_unregister_driver(&pvf_blk_driver);
	unregister_blkdev(pvf_blk_major, "pvd");
	ida_destroy(&pvf_blk_ida);
}

module_init(pvf_blk_init);
module_exit(pvf_blk_exit);

MODULE_ALIAS("pvf_virtio:d00000002v*");
