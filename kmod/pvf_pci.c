// SPDX-License-Identifier: GPL-2.0
/*
 * pvf_pci.c - virtio 1.x PCI transport for the pvf_virtio bus
 *
 * Binds vendor 0x1af4 modern devices (0x1041 net, 0x1042 blk) and the
 * transitional ones (0x1000 net, 0x1001 blk) when they carry the modern
 * vendor capabilities; legacy-only I/O-port devices are refused.
 *
 * Interrupts: MSI-X with a config vector and one vector per queue, else
 * MSI-X with a config vector and one vector shared by all queues, else
 * INTx with the ISR register.
 */
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/delay.h>
#include <linux/string.h>
#include <uapi/linux/virtio_pci.h>
#define PVF_COMPAT_PCI
#include "pvf_compat.h"
#include "pvf_virtio.h"

#define PVF_PCI_VENDOR		0x1af4
#define PVF_PCI_MODERN_BASE	0x1040

enum pvf_irq_mode {
	PVF_IRQ_PER_VQ,
	PVF_IRQ_SHARED,
	PVF_IRQ_INTX,
};

static char *only;
module_param(only, charp, 0444);
MODULE_PARM_DESC(only,
		 "Comma-separated PCI addresses (e.g. 0000:00:04.0) to bind; others are left alone (default: bind all supported ids)");

static bool skip_transitional;
module_param(skip_transitional, bool, 0444);
MODULE_PARM_DESC(skip_transitional,
		 "Do not bind transitional devices 0x1000/0x1001, leave them to the in-tree virtio_pci (default: N)");

static int irq_mode;
module_param(irq_mode, int, 0444);
MODULE_PARM_DESC(irq_mode,
		 "First interrupt mode to try: 0 MSI-X per queue, 1 MSI-X shared, 2 INTx (default: 0)");

static unsigned int max_queue_size = 256;
module_param(max_queue_size, uint, 0444);
MODULE_PARM_DESC(max_queue_size,
		 "Upper bound for virtqueue sizes, a power of 2 (default: 256)");

struct pvf_pci_vq {
	struct pvf_virtqueue *vq;
	void __iomem *notify;
	int irq;			/* per-queue MSI-X irq, or -1 */
	char irq_name[40];
};

struct pvf_pci_dev {
	struct pvf_device vdev;
	struct pci_dev *pci;

	void __iomem *common;
	void __iomem *isr;
	void __iomem *device;
	u32 device_len;
	void __iomem *notify_base;	/* NULL: each queue maps its own */
	u32 notify_len;
	u32 notify_mul;
	int notify_cap;
	int bars;

	enum pvf_irq_mode mode;
	bool vectors_allocated;
	int config_irq;			/* MSI-X config irq, or -1 */
	int shared_irq;			/* shared queue irq / INTx, or -1 */
	char config_name[40];
	char shared_name[40];

	unsigned int nvqs;
	struct pvf_pci_vq *vqs;
};

#define to_vp(_vdev) container_of(_vdev, struct pvf_pci_dev, vdev)
#define VP_COMMON(vp, field) \
	((vp)->common + offsetof(struct virtio_pci_common_cfg, field))

static bool pvf_pci_gone(struct pvf_pci_dev *vp)
{
	return !pci_device_is_present(vp->pci);
}

/* ---- config ops -------------------------------------------------------- */

static void pvf_pci_get(struct pvf_device *vdev, unsigned int offset,
			void *buf, unsigned int len)
{
	struct pvf_pci_dev *vp = to_vp(vdev);
	void __iomem *p = vp->device + offset;
	__le16 w;
	__le32 l;
	u8 *b = buf;

	if (offset + len > vp->device_len || offset + len < offset) {
		dev_err_once(&vdev->dev, "config read beyond window\n");
		memset(buf, 0, len);
		return;
	}
	switch (len) {
	case 1:
		*b = ioread8(p);
		break;
	case 2:
		w = cpu_to_le16(ioread16(p));
		memcpy(buf, &w, 2);
		break;
	case 4:
		l = cpu_to_le32(ioread32(p));
		memcpy(buf, &l, 4);
		break;
	case 8:
		l = cpu_to_le32(ioread32(p));
		memcpy(buf, &l, 4);
		l = cpu_to_le32(ioread32(p + 4));
		memcpy(b + 4, &l, 4);
		break;
	default:
		while (len--)
			*b++ = ioread8(p++);
	}
}

static void pvf_pci_set(struct pvf_device *vdev, unsigned int offset,
			const void *buf, unsigned int len)
{
	struct pvf_pci_dev *vp = to_vp(vdev);
	void __iomem *p = vp->device + offset;
	const u8 *b = buf;
	__le16 w;
	__le32 l;

	if (offset + len > vp->device_len || offset + len < offset) {
		dev_err_once(&vdev->dev, "config write beyond window\n");
		return;
	}
	switch (len) {
	case 1:
		iowrite8(*b, p);
		break;
	case 2:
		memcpy(&w, buf, 2);
		iowrite16(le16_to_cpu(w), p);
		break;
	case 4:
		memcpy(&l, buf, 4);
		iowrite32(le32_to_cpu(l), p);
		break;
	default:
		while (len--)
			iowrite8(*b++, p++);
	}
}

static u32 pvf_pci_generation(struct pvf_device *vdev)
{
	return ioread8(VP_COMMON(to_vp(vdev), config_generation));
}

static u8 pvf_pci_get_status(struct pvf_device *vdev)
{
	struct pvf_pci_dev *vp = to_vp(vdev);
	u8 status = ioread8(VP_COMMON(vp, device_status));

	/* all-ones: the function vanished (surprise removal) */
	if (unlikely(status == 0xff) && pvf_pci_gone(vp) &&
	    !pvf_device_is_broken(vdev)) {
		dev_warn(&vdev->dev, "device removed, marking it broken\n");
		pvf_break_device(vdev);
	}
	return status;
}

static void pvf_pci_set_status(struct pvf_device *vdev, u8 status)
{
	WARN_ON(!status);
	iowrite8(status, VP_COMMON(to_vp(vdev), device_status));
}

static void pvf_pci_synchronize(struct pvf_pci_dev *vp)
{
	unsigned int i;

	if (vp->config_irq >= 0)
		synchronize_irq(vp->config_irq);
	if (vp->shared_irq >= 0)
		synchronize_irq(vp->shared_irq);
	for (i = 0; i < vp->nvqs; i++)
		if (vp->vqs[i].irq >= 0)
			synchronize_irq(vp->vqs[i].irq);
}

#ifdef PVF_TEST_HOOKS
/* Test hook, only in test builds (kmod/README.md): resets that never end */
static int test_stuck_resets;
module_param(test_stuck_resets, int, 0644);
MODULE_PARM_DESC(test_stuck_resets,
		 "Testing only: the next N resets look as if the device never completed them");

static bool pvf_pci_test_stuck_reset(void)
{
	int n = READ_ONCE(test_stuck_resets);

	if (n <= 0)
		return false;
	WRITE_ONCE(test_stuck_resets, n - 1);
	return true;
}
#else
static inline bool pvf_pci_test_stuck_reset(void)
{
	return false;
}
#endif

static void pvf_pci_reset(struct pvf_device *vdev)
{
	struct pvf_pci_dev *vp = to_vp(vdev);
	bool stuck = pvf_pci_test_stuck_reset();
	unsigned int waited = 0;
	u8 status;

	iowrite8(0, VP_COMMON(vp, device_status));
	/* the reset is complete once the status reads back as 0 */
	while ((status = ioread8(VP_COMMON(vp, device_status))) != 0 ||
	       stuck) {
		if (status == 0xff && pvf_pci_gone(vp)) {
			pvf_break_device(vdev);
			break;
		}
		if (++waited > 5000) {
			dev_err(&vdev->dev, "device does not reset\n");
			pvf_break_device(vdev);
			break;
		}
		usleep_range(1000, 2000);
	}
	pvf_pci_synchronize(vp);
}

static u64 pvf_pci_get_features(struct pvf_device *vdev)
{
	struct pvf_pci_dev *vp = to_vp(vdev);
	u64 f;

	iowrite32(0, VP_COMMON(vp, device_feature_select));
	f = ioread32(VP_COMMON(vp, device_feature));
	iowrite32(1, VP_COMMON(vp, device_feature_select));
	f |= (u64)ioread32(VP_COMMON(vp, device_feature)) << 32;
	return f;
}

static int pvf_pci_finalize_features(struct pvf_device *vdev)
{
	struct pvf_pci_dev *vp = to_vp(vdev);

	iowrite32(0, VP_COMMON(vp, guest_feature_select));
	iowrite32(lower_32_bits(vdev->features), VP_COMMON(vp, guest_feature));
	iowrite32(1, VP_COMMON(vp, guest_feature_select));
	iowrite32(upper_32_bits(vdev->features), VP_COMMON(vp, guest_feature));
	return 0;
}

static bool pvf_pci_is_present(struct pvf_device *vdev)
{
	return !pvf_pci_gone(to_vp(vdev));
}

static void pvf_pci_synchronize_cbs(struct pvf_device *vdev)
{
	pvf_pci_synchronize(to_vp(vdev));
}

/* ---- interrupts -------------------------------------------------------- */

static irqreturn_t pvf_pci_config_irq(int irq, void *data)
{
	struct pvf_pci_dev *vp = data;

	pvf_config_changed(&vp->vdev);
	return IRQ_HANDLED;
}

static irqreturn_t pvf_pci_vqs_irq(int irq, void *data)
{
	struct pvf_pci_dev *vp = data;
	irqreturn_t ret = IRQ_NONE;
	unsigned int i;

	for (i = 0; i < vp->nvqs; i++)
		if (vp->vqs[i].vq &&
		    pvf_vq_interrupt(irq, vp->vqs[i].vq) == IRQ_HANDLED)
			ret = IRQ_HANDLED;
	return ret;
}

static irqreturn_t pvf_pci_intx_irq(int irq, void *data)
{
	struct pvf_pci_dev *vp = data;
	u8 isr;

	/* reading ISR acknowledges the interrupt */
	isr = ioread8(vp->isr);
	if (!isr || (isr == 0xff && pvf_pci_gone(vp)))
		return IRQ_NONE;
	if (isr & VIRTIO_PCI_ISR_CONFIG)
		pvf_config_changed(&vp->vdev);
	pvf_pci_vqs_irq(irq, vp);
	return IRQ_HANDLED;
}

static void pvf_pci_free_irqs(struct pvf_pci_dev *vp)
{
	unsigned int i;

	for (i = 0; i < vp->nvqs; i++) {
		if (vp->vqs[i].irq >= 0)
			free_irq(vp->vqs[i].irq, vp->vqs[i].vq);
		vp->vqs[i].irq = -1;
	}
	if (vp->shared_irq >= 0)
		free_irq(vp->shared_irq, vp);
	vp->shared_irq = -1;
	if (vp->config_irq >= 0)
		free_irq(vp->config_irq, vp);
	vp->config_irq = -1;
	if (vp->vectors_allocated)
		pci_free_irq_vectors(vp->pci);
	vp->vectors_allocated = false;
}

/* allocate vectors and the config (and shared queue) interrupt */
static int pvf_pci_request_irqs(struct pvf_pci_dev *vp, unsigned int nvqs,
				enum pvf_irq_mode mode)
{
	const char *name = dev_name(&vp->vdev.dev);
	struct pci_dev *pci = vp->pci;
	unsigned int nvec;
	int err;

	if (mode == PVF_IRQ_INTX) {
		snprintf(vp->shared_name, sizeof(vp->shared_name), "%s-intx",
			 name);
		err = request_irq(pci->irq, pvf_pci_intx_irq, IRQF_SHARED,
				  vp->shared_name, vp);
		if (err)
			return err;
		vp->shared_irq = pci->irq;
		return 0;
	}

	nvec = mode == PVF_IRQ_PER_VQ ? nvqs + 1 : 2;
	err = pci_alloc_irq_vectors(pci, nvec, nvec, PCI_IRQ_MSIX);
	if (err < 0)
		return err;
	vp->vectors_allocated = true;

	snprintf(vp->config_name, sizeof(vp->config_name), "%s-config", name);
	err = request_irq(pci_irq_vector(pci, 0), pvf_pci_config_irq, 0,
			  vp->config_name, vp);
	if (err)
		return err;
	vp->config_irq = pci_irq_vector(pci, 0);

	iowrite16(0, VP_COMMON(vp, msix_config));
	if (ioread16(VP_COMMON(vp, msix_config)) == VIRTIO_MSI_NO_VECTOR)
		return -EBUSY;

	if (mode == PVF_IRQ_SHARED) {
		snprintf(vp->shared_name, sizeof(vp->shared_name),
			 "%s-virtqueues", name);
		err = request_irq(pci_irq_vector(pci, 1), pvf_pci_vqs_irq, 0,
				  vp->shared_name, vp);
		if (err)
			return err;
		vp->shared_irq = pci_irq_vector(pci, 1);
	}
	return 0;
}

/* ---- virtqueues -------------------------------------------------------- */

static bool pvf_pci_notify(struct pvf_virtqueue *vq)
{
	struct pvf_pci_dev *vp = to_vp(vq->vdev);

	iowrite16(vq->index, vp->vqs[vq->index].notify);
	return true;
}

static u16 pvf_pci_vector(struct pvf_pci_dev *vp, unsigned int i)
{
	switch (vp->mode) {
	case PVF_IRQ_PER_VQ:
		return i + 1;
	case PVF_IRQ_SHARED:
		return 1;
	default:
		return VIRTIO_MSI_NO_VECTOR;
	}
}

static void __iomem *pvf_pci_map_cap(struct pci_dev *pci, int pos,
				     u32 minlen, u32 align, u64 start,
				     u32 maxlen, u32 *len);

/*
 * A small notify region is mapped whole at probe; a large one (a page per
 * queue, up to 1024 queues) is mapped a queue at a time, as the in-tree
 * virtio_pci_modern_dev.c does, so no queue is out of reach of a mapping.
 */
static int pvf_pci_map_notify(struct pvf_pci_dev *vp, struct pvf_pci_vq *pvq,
			      unsigned int i)
{
	u64 where = (u64)ioread16(VP_COMMON(vp, queue_notify_off)) *
		    vp->notify_mul;

	if (!vp->notify_base) {
		pvq->notify = pvf_pci_map_cap(vp->pci, vp->notify_cap, 2, 2,
					      where, 2, NULL);
		return pvq->notify ? 0 : -EINVAL;
	}
	if (where + 2 > vp->notify_len) {
		dev_err(&vp->vdev.dev,
			"queue %u: notify offset %llu beyond the region\n",
			i, where);
		return -EINVAL;
	}
	pvq->notify = vp->notify_base + where;
	return 0;
}

static void pvf_pci_unmap_notify(struct pvf_pci_dev *vp,
				 struct pvf_pci_vq *pvq)
{
	if (!vp->notify_base && pvq->notify)
		pci_iounmap(vp->pci, pvq->notify);
	pvq->notify = NULL;
}

static int pvf_pci_setup_vq(struct pvf_pci_dev *vp, unsigned int i,
			    const struct pvf_vq_info *info)
{
	struct pvf_pci_vq *pvq = &vp->vqs[i];
	struct pvf_virtqueue *vq;
	u16 num, vector;
	dma_addr_t a;
	int err;

	iowrite16(i, VP_COMMON(vp, queue_select));
	num = ioread16(VP_COMMON(vp, queue_size));
	if (!num || num == 0xffff)
		return -ENOENT;
	if (ioread16(VP_COMMON(vp, queue_enable)))
		return -EBUSY;
	if (!is_power_of_2(num)) {
		dev_err(&vp->vdev.dev, "queue %u: bad size %u\n", i, num);
		return -EINVAL;
	}
	num = min_t(unsigned int, num, max_queue_size);

	err = pvf_pci_map_notify(vp, pvq, i);
	if (err)
		return err;

	vq = pvf_vq_new(&vp->vdev, &vp->pci->dev, i, num, pvf_pci_notify,
			info->callback, info->name);
	if (IS_ERR(vq))
		return PTR_ERR(vq);
	pvq->vq = vq;

	iowrite16(num, VP_COMMON(vp, queue_size));
	a = pvf_vq_desc_addr(vq);
	iowrite32(lower_32_bits(a), VP_COMMON(vp, queue_desc_lo));
	iowrite32(upper_32_bits(a), VP_COMMON(vp, queue_desc_hi));
	a = pvf_vq_driver_addr(vq);
	iowrite32(lower_32_bits(a), VP_COMMON(vp, queue_avail_lo));
	iowrite32(upper_32_bits(a), VP_COMMON(vp, queue_avail_hi));
	a = pvf_vq_device_addr(vq);
	iowrite32(lower_32_bits(a), VP_COMMON(vp, queue_used_lo));
	iowrite32(upper_32_bits(a), VP_COMMON(vp, queue_used_hi));

	vector = pvf_pci_vector(vp, i);
	if (vector != VIRTIO_MSI_NO_VECTOR) {
		iowrite16(vector, VP_COMMON(vp, queue_msix_vector));
		if (ioread16(VP_COMMON(vp, queue_msix_vector)) != vector)
			return -EBUSY;
	}

	if (vp->mode == PVF_IRQ_PER_VQ) {
		snprintf(pvq->irq_name, sizeof(pvq->irq_name), "%s-%s",
			 dev_name(&vp->vdev.dev), info->name);
		err = request_irq(pci_irq_vector(vp->pci, vector),
				  pvf_vq_interrupt, 0, pvq->irq_name, vq);
		if (err)
			return err;
		pvq->irq = pci_irq_vector(vp->pci, vector);
	}
	return 0;
}

static void pvf_pci_del_vqs(struct pvf_device *vdev)
{
	struct pvf_pci_dev *vp = to_vp(vdev);
	unsigned int i;

	pvf_pci_free_irqs(vp);
	for (i = 0; i < vp->nvqs; i++) {
		pvf_pci_unmap_notify(vp, &vp->vqs[i]);
		if (!vp->vqs[i].vq)
			continue;
		if (vp->mode != PVF_IRQ_INTX && !pvf_device_is_broken(vdev)) {
			iowrite16(i, VP_COMMON(vp, queue_select));
			iowrite16(VIRTIO_MSI_NO_VECTOR,
				  VP_COMMON(vp, queue_msix_vector));
		}
		pvf_vq_del(vp->vqs[i].vq);
	}
	if (vp->mode != PVF_IRQ_INTX && !pvf_device_is_broken(vdev))
		iowrite16(VIRTIO_MSI_NO_VECTOR, VP_COMMON(vp, msix_config));
	kfree(vp->vqs);
	vp->vqs = NULL;
	vp->nvqs = 0;
}

static int pvf_pci_try_vqs(struct pvf_pci_dev *vp, unsigned int nvqs,
			   struct pvf_virtqueue *vqs[],
			   const struct pvf_vq_info info[],
			   enum pvf_irq_mode mode)
{
	unsigned int i;
	int err;

	vp->vqs = kcalloc(nvqs, sizeof(*vp->vqs), GFP_KERNEL);
	if (!vp->vqs)
		return -ENOMEM;
	vp->nvqs = nvqs;
	vp->mode = mode;
	for (i = 0; i < nvqs; i++)
		vp->vqs[i].irq = -1;

	err = pvf_pci_request_irqs(vp, nvqs, mode);
	if (err)
		goto fail;
	for (i = 0; i < nvqs; i++) {
		err = pvf_pci_setup_vq(vp, i, &info[i]);
		if (err)
			goto fail;
		vqs[i] = vp->vqs[i].vq;
	}
	/* all set up: let the device use them */
	for (i = 0; i < nvqs; i++) {
		iowrite16(i, VP_COMMON(vp, queue_select));
		iowrite16(1, VP_COMMON(vp, queue_enable));
	}
	return 0;

fail:
	pvf_pci_del_vqs(&vp->vdev);
	return err;
}

static int pvf_pci_find_vqs(struct pvf_device *vdev, unsigned int nvqs,
			    struct pvf_virtqueue *vqs[],
			    const struct pvf_vq_info info[])
{
	struct pvf_pci_dev *vp = to_vp(vdev);
	static const char * const names[] = {
		"MSI-X per queue", "MSI-X shared", "INTx" };
	int mode, err = -EINVAL;

	if (nvqs > ioread16(VP_COMMON(vp, num_queues)))
		return -ENOENT;
	for (mode = clamp(irq_mode, 0, 2); mode <= PVF_IRQ_INTX; mode++) {
		err = pvf_pci_try_vqs(vp, nvqs, vqs, info, mode);
		if (!err) {
			dev_info(&vdev->dev, "%u queues, %s interrupts\n",
				 nvqs, names[mode]);
			return 0;
		}
		/* queue problems do not go away with another irq mode */
		if (err == -ENOENT || err == -EINVAL || err == -ENOMEM)
			break;
	}
	return err;
}

static const struct pvf_config_ops pvf_pci_config_ops = {
	.get			= pvf_pci_get,
	.set			= pvf_pci_set,
	.generation		= pvf_pci_generation,
	.get_status		= pvf_pci_get_status,
	.set_status		= pvf_pci_set_status,
	.reset			= pvf_pci_reset,
	.get_features		= pvf_pci_get_features,
	.finalize_features	= pvf_pci_finalize_features,
	.find_vqs		= pvf_pci_find_vqs,
	.del_vqs		= pvf_pci_del_vqs,
	.is_present		= pvf_pci_is_present,
	.synchronize_cbs	= pvf_pci_synchronize_cbs,
};

/* ---- capabilities ------------------------------------------------------ */

/*
 * The capability structure the spec says @type has: anything shorter is
 * malformed and is skipped, as a capability of a reserved type would be.
 */
static u8 pvf_pci_cap_min_len(u8 type)
{
	return type == VIRTIO_PCI_CAP_NOTIFY_CFG ?
		sizeof(struct virtio_pci_notify_cap) :
		sizeof(struct virtio_pci_cap);
}

/* find the first well-formed vendor capability of @type on a memory BAR */
static int pvf_pci_find_cap(struct pci_dev *pci, u8 type, int *bars)
{
	int pos;

	for (pos = pci_find_capability(pci, PCI_CAP_ID_VNDR); pos > 0;
	     pos = pci_find_next_capability(pci, pos, PCI_CAP_ID_VNDR)) {
		u8 cfg_type, bar, cap_len;

		pci_read_config_byte(pci, pos +
				     offsetof(struct virtio_pci_cap, cfg_type),
				     &cfg_type);
		if (cfg_type != type)
			continue;
		pci_read_config_byte(pci, pos +
				     offsetof(struct virtio_pci_cap, cap_len),
				     &cap_len);
		if (cap_len < pvf_pci_cap_min_len(type)) {
			dev_warn(&pci->dev,
				 "capability at %#x: length %u too short for type %u, ignored\n",
				 pos, cap_len, type);
			continue;
		}
		pci_read_config_byte(pci, pos +
				     offsetof(struct virtio_pci_cap, bar),
				     &bar);
		if (bar >= PCI_STD_NUM_BARS ||
		    !(pci_resource_flags(pci, bar) & IORESOURCE_MEM))
			continue;
		*bars |= BIT(bar);
		return pos;
	}
	return 0;
}

/* where the region a capability describes lies: BAR, offset, length */
static void pvf_pci_cap_region(struct pci_dev *pci, int pos, u8 *bar,
			       u32 *offset, u32 *length)
{
	pci_read_config_byte(pci, pos + offsetof(struct virtio_pci_cap, bar),
			     bar);
	pci_read_config_dword(pci,
			      pos + offsetof(struct virtio_pci_cap, offset),
			      offset);
	pci_read_config_dword(pci,
			      pos + offsetof(struct virtio_pci_cap, length),
			      length);
}

/**
 * pvf_pci_map_cap - map part of the region a capability describes
 * @pci: the function
 * @pos: the capability's position in config space
 * @minlen: bytes the region must have past @start
 * @align: alignment the region's offset in its BAR must have
 * @start: where the part to map begins, from the region's start
 * @maxlen: at most this many bytes are mapped
 * @len: if not NULL, set to the number of bytes mapped
 *
 * Every sum is done in 64 bits: a device can name offsets and lengths
 * that wrap a 32-bit size_t (i386).
 *
 * Return: the mapping, or NULL if the capability does not fit its BAR.
 */
static void __iomem *pvf_pci_map_cap(struct pci_dev *pci, int pos,
				     u32 minlen, u32 align, u64 start,
				     u32 maxlen, u32 *len)
{
	u32 offset, length;
	u64 begin;
	u8 bar;

	pvf_pci_cap_region(pci, pos, &bar, &offset, &length);
	if (length <= start || length - start < minlen) {
		dev_err(&pci->dev,
			"capability at %#x: %llu bytes from %llu do not fit its length %u\n",
			pos, (u64)minlen, start, length);
		return NULL;
	}
	begin = offset + start;
	if (!IS_ALIGNED(begin, align)) {
		dev_err(&pci->dev,
			"capability at %#x: offset %llu not aligned to %u\n",
			pos, begin, align);
		return NULL;
	}
	length = min_t(u64, length - start, maxlen);
	if (begin + length > pci_resource_len(pci, bar)) {
		dev_err(&pci->dev, "capability at %#x beyond BAR%u\n", pos,
			bar);
		return NULL;
	}
	if (len)
		*len = length;
	return pci_iomap_range(pci, bar, begin, length);
}

static void pvf_pci_unmap(struct pvf_pci_dev *vp)
{
	if (vp->device)
		pci_iounmap(vp->pci, vp->device);
	if (vp->notify_base)
		pci_iounmap(vp->pci, vp->notify_base);
	if (vp->isr)
		pci_iounmap(vp->pci, vp->isr);
	if (vp->common)
		pci_iounmap(vp->pci, vp->common);
}

static int pvf_pci_map_notify_cap(struct pvf_pci_dev *vp, int pos)
{
	struct pci_dev *pci = vp->pci;
	u32 offset, length;
	u8 bar;

	vp->notify_cap = pos;
	pci_read_config_dword(pci, pos + offsetof(struct virtio_pci_notify_cap,
						  notify_off_multiplier),
			      &vp->notify_mul);
	pvf_pci_cap_region(pci, pos, &bar, &offset, &length);
	if ((u64)length + offset_in_page(offset) > PAGE_SIZE)
		return 0;
	vp->notify_base = pvf_pci_map_cap(pci, pos, 2, 2, 0, length,
					  &vp->notify_len);
	return vp->notify_base ? 0 : -EINVAL;
}

static int pvf_pci_map(struct pvf_pci_dev *vp)
{
	struct pci_dev *pci = vp->pci;
	int common, isr, notify, device;
	int err;

	common = pvf_pci_find_cap(pci, VIRTIO_PCI_CAP_COMMON_CFG, &vp->bars);
	if (!common) {
		dev_info(&pci->dev,
			 "no virtio 1.x capabilities (legacy-only device), not binding\n");
		return -ENODEV;
	}
	isr = pvf_pci_find_cap(pci, VIRTIO_PCI_CAP_ISR_CFG, &vp->bars);
	notify = pvf_pci_find_cap(pci, VIRTIO_PCI_CAP_NOTIFY_CFG, &vp->bars);
	device = pvf_pci_find_cap(pci, VIRTIO_PCI_CAP_DEVICE_CFG, &vp->bars);
	if (!isr || !notify) {
		dev_err(&pci->dev, "missing ISR or notify capability\n");
		return -EINVAL;
	}

	err = pci_request_selected_regions(pci, vp->bars, "pvf_pci");
	if (err)
		return err;

	err = -EINVAL;
	vp->common = pvf_pci_map_cap(pci, common,
				     sizeof(struct virtio_pci_common_cfg), 4,
				     0, sizeof(struct virtio_pci_common_cfg),
				     NULL);
	if (!vp->common)
		goto fail;
	vp->isr = pvf_pci_map_cap(pci, isr, 1, 1, 0, 1, NULL);
	if (!vp->isr)
		goto fail;
	err = pvf_pci_map_notify_cap(vp, notify);
	if (err)
		goto fail;
	err = -EINVAL;
	if (device) {
		vp->device = pvf_pci_map_cap(pci, device, 0, 4, 0, PAGE_SIZE,
					     &vp->device_len);
		if (!vp->device)
			goto fail;
	}
	return 0;

fail:
	pvf_pci_unmap(vp);
	pci_release_selected_regions(pci, vp->bars);
	return err;
}

/* ---- probe / remove ---------------------------------------------------- */

static bool pvf_pci_overridden(struct pci_dev *pci)
{
	return pvf_compat_pci_override_is(pci, "pvf_pci");
}

/* "only=" filter; an explicit driver_override always wins */
static bool pvf_pci_wanted(struct pci_dev *pci)
{
	const char *name = pci_name(pci);
	size_t n = strlen(name);
	const char *p = only;

	if (!p || !*p || pvf_pci_overridden(pci))
		return true;
	while (p && *p) {
		if (!strncmp(p, name, n) && (p[n] == ',' || !p[n]))
			return true;
		p = strchr(p, ',');
		if (p)
			p++;
	}
	return false;
}

static void pvf_pci_release(struct device *dev)
{
	kfree(to_vp(dev_to_pvf(dev)));
}

static int pvf_pci_probe(struct pci_dev *pci, const struct pci_device_id *id)
{
	bool transitional = pci->device < PVF_PCI_MODERN_BASE;
	struct pvf_pci_dev *vp;
	int err;

	/* driver_override may hand us anything: only virtio functions */
	if (pci->vendor != PVF_PCI_VENDOR || pci->device < 0x1000 ||
	    pci->device > 0x107f)
		return -ENODEV;
	if (!pvf_pci_wanted(pci))
		return -ENODEV;
	if (transitional && skip_transitional && !pvf_pci_overridden(pci))
		return -ENODEV;

	vp = kzalloc(sizeof(*vp), GFP_KERNEL);
	if (!vp)
		return -ENOMEM;
	vp->pci = pci;
	vp->config_irq = -1;
	vp->shared_irq = -1;
	vp->vdev.vendor = pci->subsystem_vendor;
	vp->vdev.id = transitional ? pci->subsystem_device :
				     pci->device - PVF_PCI_MODERN_BASE;
	vp->vdev.config = &pvf_pci_config_ops;
	vp->vdev.dev.parent = &pci->dev;
	vp->vdev.dev.release = pvf_pci_release;
	pci_set_drvdata(pci, vp);

	err = pci_enable_device(pci);
	if (err)
		goto err_free;
	err = pvf_pci_map(vp);
	if (err)
		goto err_disable;
	err = dma_set_mask_and_coherent(&pci->dev, DMA_BIT_MASK(64));
	if (err)
		err = dma_set_mask_and_coherent(&pci->dev, DMA_BIT_MASK(32));
	if (err)
		goto err_unmap;
	pci_set_master(pci);

	err = pvf_register_device(&vp->vdev);
	if (err)
		goto err_put;
	return 0;

err_put:
	pvf_pci_unmap(vp);
	pci_release_selected_regions(pci, vp->bars);
	pci_disable_device(pci);
	put_device(&vp->vdev.dev);
	return err;
err_unmap:
	pvf_pci_unmap(vp);
	pci_release_selected_regions(pci, vp->bars);
err_disable:
	pci_disable_device(pci);
err_free:
	kfree(vp);
	return err;
}

static void pvf_pci_remove(struct pci_dev *pci)
{
	struct pvf_pci_dev *vp = pci_get_drvdata(pci);

	/* surprise removal: fail I/O instead of waiting for a dead device */
	if (pvf_pci_gone(vp))
		pvf_break_device(&vp->vdev);
	pvf_unregister_device(&vp->vdev);
	if (!pvf_pci_gone(vp))
		pvf_pci_reset(&vp->vdev);
	pvf_pci_unmap(vp);
	pci_release_selected_regions(pci, vp->bars);
	pci_disable_device(pci);
	put_device(&vp->vdev.dev);
}

/*
 * Reboot, kexec, power-off.  The pvf_virtio bus has already stopped a bound
 * device (children shut down before their parent); this also covers one no
 * driver took, and one whose driver shut down without a reset.  Whatever
 * the function was given before must not be written after this kernel.
 */
static void pvf_pci_shutdown(struct pci_dev *pci)
{
	struct pvf_pci_dev *vp = pci_get_drvdata(pci);

	if (pvf_pci_gone(vp))
		return;
	pvf_break_device(&vp->vdev);
	pvf_pci_reset(&vp->vdev);	/* also waits for our interrupt handlers */
	pci_clear_master(pci);
}

#ifdef CONFIG_PM_SLEEP
/*
 * System sleep, as drivers/virtio/virtio_pci_common.c virtio_pci_freeze()
 * and virtio_pci_restore(): the same pair for suspend/resume (S3),
 * freeze/thaw and poweroff/restore (S4).  The PCI core saves and restores
 * the config space around them.
 */
static int pvf_pci_freeze(struct device *dev)
{
	struct pci_dev *pci = to_pci_dev(dev);
	struct pvf_pci_dev *vp = pci_get_drvdata(pci);
	int err;

	err = pvf_device_freeze(&vp->vdev);
	if (!err)
		pci_disable_device(pci);
	return err;
}

static int pvf_pci_restore(struct device *dev)
{
	struct pci_dev *pci = to_pci_dev(dev);
	struct pvf_pci_dev *vp = pci_get_drvdata(pci);
	int err;

	err = pci_enable_device(pci);
	if (err)
		return err;
	pci_set_master(pci);
	return pvf_device_restore(&vp->vdev);
}

static const struct dev_pm_ops pvf_pci_pm_ops = {
	SET_SYSTEM_SLEEP_PM_OPS(pvf_pci_freeze, pvf_pci_restore)
};

#define PVF_PCI_PM_OPS	(&pvf_pci_pm_ops)
#else
#define PVF_PCI_PM_OPS	NULL
#endif

static const struct pci_device_id pvf_pci_ids[] = {
	{ PCI_DEVICE(PVF_PCI_VENDOR, 0x1041) },	/* modern net */
	{ PCI_DEVICE(PVF_PCI_VENDOR, 0x1042) },	/* modern block */
	{ PCI_DEVICE_SUB(PVF_PCI_VENDOR, 0x1000, PCI_ANY_ID, VIRTIO_ID_NET) },
	{ PCI_DEVICE_SUB(PVF_PCI_VENDOR, 0x1001, PCI_ANY_ID, VIRTIO_ID_BLOCK) },
	{ }
};
MODULE_DEVICE_TABLE(pci, pvf_pci_ids);

static struct pci_driver pvf_pci_driver = {
	.name		= "pvf_pci",
	.id_table	= pvf_pci_ids,
	.probe		= pvf_pci_probe,
	.remove		= pvf_pci_remove,
	.shutdown	= pvf_pci_shutdown,
	.driver.pm	= PVF_PCI_PM_OPS,
};

module_pci_driver(pvf_pci_driver);
