// SPDX-License-Identifier: GPL-2.0
/*
 * pvf_ring.c - split virtqueues for pvfront (VIRTIO 1.x sections 2.6, 2.7)
 *
 * Addressing (VIRTIO 1.x section 6.1, the in-tree vring_use_dma_api() rule):
 * only a device that negotiated VIRTIO_F_ACCESS_PLATFORM goes through the
 * platform's DMA translation, so only then are rings allocated and buffers
 * mapped with the DMA API.  Without the feature the device uses
 * guest-physical addresses, whether or not an IOMMU sits in front of it:
 * rings are plain pages and buffers are given as physical addresses.
 *
 * Barriers (VIRTIO 1.x section 6, VIRTIO_F_ORDER_PLATFORM): with that
 * feature the device is ordered like real hardware and the dma_ and
 * mandatory barriers are used; otherwise it is software on an SMP peer and
 * the virt_ barriers suffice.
 *
 * Everything the device writes (used ring, avail_event) is treated as
 * untrusted: descriptor chains are freed from a private shadow copy, and a
 * used element that names a free or unknown descriptor, or claims more
 * bytes than the buffer holds, breaks the queue instead of being followed.
 */
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/dma-mapping.h>
#include <linux/log2.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/io.h>
#include <asm/barrier.h>
#include "pvf_compat.h"
#include "pvf_virtio.h"

/* ring layout, little-endian as VIRTIO 1.x requires */
struct pvf_vring_desc {
	__le64 addr;
	__le32 len;
	__le16 flags;
	__le16 next;
};

struct pvf_vring_avail {
	__le16 flags;
	__le16 idx;
	__le16 ring[];		/* then __le16 used_event */
};

struct pvf_vring_used_elem {
	__le32 id;
	__le32 len;
};

struct pvf_vring_used {
	__le16 flags;
	__le16 idx;
	struct pvf_vring_used_elem ring[];	/* then __le16 avail_event */
};

/* driver-private copy of a descriptor, never read back from the device */
struct pvf_desc_extra {
	dma_addr_t addr;
	u32 len;
	u16 flags;
	u16 next;
};

/* per chain head: what is in flight */
struct pvf_desc_state {
	void *data;
	struct pvf_vring_desc *indir;	/* indirect table, or NULL */
	struct pvf_desc_extra *indir_extra;
	u32 in_len;			/* device-writable bytes */
	u16 ndescs;			/* ring descriptors used */
};

struct pvf_vring {
	struct pvf_virtqueue vq;
	struct device *dma_dev;
	pvf_vq_notify_t notify;
	unsigned int num;

	struct pvf_vring_desc *desc;
	struct pvf_vring_avail *avail;
	struct pvf_vring_used *used;
	dma_addr_t desc_dma, avail_dma, used_dma;
	size_t desc_size, avail_size, used_size;

	struct pvf_desc_extra *extra;
	struct pvf_desc_state *state;

	u16 free_head;
	u16 avail_idx_shadow;
	u16 avail_flags_shadow;
	u16 last_used_idx;
	u16 num_added;

	bool use_dma_api;
	bool weak_barriers;
	bool indirect;
	bool event_idx;
	bool broken;
	bool reported;
};

#define to_vring(_vq) container_of(_vq, struct pvf_vring, vq)

/*
 * VIRTIO_F_ACCESS_PLATFORM is the only thing that decides: a device without
 * it bypasses any IOMMU and reads guest-physical addresses, so DMA API
 * addresses (IOVAs, bounce buffers) would point it at the wrong memory.
 * The in-tree rule also uses the DMA API for every Xen guest; Xen is out of
 * pvfront's scope.
 */
static bool pvf_use_dma_api(const struct pvf_device *vdev)
{
	return pvf_has_feature(vdev, VIRTIO_F_ACCESS_PLATFORM);
}

/*
 * The barriers a device of this kind needs (see the comment at the top);
 * each caller names the device-side barrier its call pairs with.
 */
static inline void pvf_mb(const struct pvf_vring *vr)
{
	if (vr->weak_barriers)
		virt_mb();	/* software device: SMP ordering */
	else
		mb();		/* hardware-like device: full ordering */
}

static inline void pvf_rmb(const struct pvf_vring *vr)
{
	if (vr->weak_barriers)
		virt_rmb();	/* software device: SMP read ordering */
	else
		dma_rmb();	/* ORDER_PLATFORM: reads of coherent DMA memory */
}

static inline void pvf_wmb(const struct pvf_vring *vr)
{
	if (vr->weak_barriers)
		virt_wmb();	/* software device: SMP write ordering */
	else
		dma_wmb();	/* ORDER_PLATFORM: writes to coherent DMA memory */
}

/* store *p = v, then a full barrier of the matching kind */
static inline void pvf_store_mb(const struct pvf_vring *vr, __le16 *p,
				__le16 v)
{
	if (vr->weak_barriers) {
		/* software device: store and SMP full barrier */
		virt_store_mb(*p, v);
	} else {
		WRITE_ONCE(*p, v);
		/* hardware-like device: the store before any later access */
		mb();
	}
}

#ifdef PVF_TEST_HOOKS
/*
 * Test hook, only in test builds (kmod/README.md): make the next used
 * element look corrupted, as a buggy or hostile device would write it.
 * 1: id out of range, 2: id of a free descriptor, 3: length beyond the
 * buffer (waits for a buffer the device may write).  Resets itself to 0.
 */
static int inject_bad_used;
module_param(inject_bad_used, int, 0644);
MODULE_PARM_DESC(inject_bad_used,
		 "Testing only: corrupt the next used element (1 bad id, 2 id not in flight, 3 bad length)");

static void pvf_inject(struct pvf_vring *vr, u32 *id, u32 *len)
{
	int what = READ_ONCE(inject_bad_used);
	unsigned int i;

	if (!what)
		return;
	if (what == 3 && (*id >= vr->num || !vr->state[*id].in_len))
		return;
	if (cmpxchg(&inject_bad_used, what, 0) != what)
		return;
	switch (what) {
	case 1:
		*id = vr->num + 7;
		break;
	case 2:
		for (i = 0; i < vr->num; i++)
			if (!vr->state[i].data) {
				*id = i;
				break;
			}
		break;
	case 3:
		*len = vr->state[*id].in_len + 1;
		break;
	}
}
#else
static inline void pvf_inject(struct pvf_vring *vr, u32 *id, u32 *len)
{
}
#endif

static inline __le16 *pvf_used_event(struct pvf_vring *vr)
{
	return &vr->avail->ring[vr->num];
}

static inline __le16 *pvf_avail_event(struct pvf_vring *vr)
{
	return (__le16 *)&vr->used->ring[vr->num];
}

static inline u16 pvf_used_idx(struct pvf_vring *vr)
{
	return le16_to_cpu(READ_ONCE(vr->used->idx));
}

static inline bool pvf_more_used(struct pvf_vring *vr)
{
	return vr->last_used_idx != pvf_used_idx(vr);
}

static void pvf_vq_mark_bad(struct pvf_vring *vr, const char *what,
			    unsigned int a, unsigned int b)
{
	WRITE_ONCE(vr->broken, true);
	if (vr->reported)
		return;
	vr->reported = true;
	dev_err(&vr->vq.vdev->dev, "%s: %s (%u, %u), queue broken\n",
		vr->vq.name, what, a, b);
}

static void pvf_unmap_one(struct pvf_vring *vr,
			  const struct pvf_desc_extra *ex)
{
	enum dma_data_direction dir;

	if (!vr->use_dma_api)
		return;
	dir = (ex->flags & VRING_DESC_F_WRITE) ? DMA_FROM_DEVICE :
						 DMA_TO_DEVICE;
	if (ex->flags & VRING_DESC_F_INDIRECT)
		dma_unmap_single(vr->dma_dev, ex->addr, ex->len, DMA_TO_DEVICE);
	else
		dma_unmap_page(vr->dma_dev, ex->addr, ex->len, dir);
}

static void pvf_set_desc(struct pvf_vring_desc *desc,
			 struct pvf_desc_extra *ex, dma_addr_t addr,
			 u32 len, u16 flags, u16 next)
{
	desc->addr = cpu_to_le64(addr);
	desc->len = cpu_to_le32(len);
	desc->flags = cpu_to_le16(flags);
	desc->next = cpu_to_le16(next);
	ex->addr = addr;
	ex->len = len;
	ex->flags = flags;
	ex->next = next;
}

static struct pvf_vring_desc *pvf_alloc_indirect(unsigned int total,
						 struct pvf_desc_extra **ex,
						 gfp_t gfp)
{
	struct pvf_vring_desc *desc;

	/* the table is device-visible, the shadow is not */
	desc = kmalloc_array(total, sizeof(*desc), gfp & ~__GFP_HIGHMEM);
	if (!desc)
		return NULL;
	*ex = kmalloc_array(total, sizeof(**ex), gfp & ~__GFP_HIGHMEM);
	if (!*ex) {
		kfree(desc);
		return NULL;
	}
	return desc;
}

/* a buffer page as the device addresses it */
static int pvf_map_page(struct pvf_vring *vr, struct page *page,
			unsigned int offset, unsigned int len,
			enum dma_data_direction dir, dma_addr_t *addr)
{
	if (!vr->use_dma_api) {
		*addr = (dma_addr_t)(page_to_phys(page) + offset);
		return 0;
	}
	*addr = dma_map_page(vr->dma_dev, page, offset, len, dir);
	return dma_mapping_error(vr->dma_dev, *addr) ? -ENOMEM : 0;
}

/* an indirect table (kmalloc'ed, so in the linear map) for the device */
static int pvf_map_indirect(struct pvf_vring *vr, void *table, u32 size,
			    dma_addr_t *addr)
{
	if (!vr->use_dma_api) {
		*addr = (dma_addr_t)virt_to_phys(table);
		return 0;
	}
	*addr = dma_map_single(vr->dma_dev, table, size, DMA_TO_DEVICE);
	return dma_mapping_error(vr->dma_dev, *addr) ? -ENOMEM : 0;
}

/*
 * Map every entry of @sgs into @desc/@ex starting at @first. With @chain,
 * the next slot is taken from ex[].next (ring free list); otherwise slots
 * are consecutive (indirect table).  Returns the number mapped, or a
 * negative errno after unmapping what was mapped.
 */
static int pvf_map_sgs(struct pvf_vring *vr, struct scatterlist *sgs[],
		       unsigned int out_sgs, unsigned int in_sgs,
		       unsigned int total, struct pvf_vring_desc *desc,
		       struct pvf_desc_extra *ex, u16 first, bool chain,
		       u16 *last, u32 *in_len)
{
	unsigned int n, mapped = 0;
	struct scatterlist *sg;
	u16 i = first, j;

	*in_len = 0;
	for (n = 0; n < out_sgs + in_sgs; n++) {
		bool in = n >= out_sgs;

		for (sg = sgs[n]; sg && mapped < total; sg = sg_next(sg)) {
			dma_addr_t addr;
			u16 flags = VRING_DESC_F_NEXT;
			u16 next;

			if (pvf_map_page(vr, sg_page(sg), sg->offset,
					 sg->length, in ? DMA_FROM_DEVICE :
							  DMA_TO_DEVICE, &addr))
				goto unmap;
			if (in) {
				flags |= VRING_DESC_F_WRITE;
				*in_len += sg->length;
			}
			next = chain ? ex[i].next : i + 1;
			pvf_set_desc(&desc[i], &ex[i], addr, sg->length,
				     flags, next);
			*last = i;
			i = next;
			mapped++;
		}
	}
	desc[*last].flags &= cpu_to_le16(~VRING_DESC_F_NEXT);
	ex[*last].flags &= ~VRING_DESC_F_NEXT;
	return mapped;

unmap:
	for (j = first, n = 0; n < mapped; n++) {
		pvf_unmap_one(vr, &ex[j]);
		j = chain ? ex[j].next : j + 1;
	}
	return -ENOMEM;
}

static int pvf_vq_add(struct pvf_virtqueue *vq, struct scatterlist *sgs[],
		      unsigned int total, unsigned int out_sgs,
		      unsigned int in_sgs, void *data, gfp_t gfp)
{
	struct pvf_vring *vr = to_vring(vq);
	struct pvf_desc_extra *indir_ex = NULL;
	struct pvf_vring_desc *indir = NULL;
	unsigned int ndescs;
	u16 head, last = 0;
	u32 in_len;
	int ret;

	if (unlikely(READ_ONCE(vr->broken)))
		return -EIO;
	if (WARN_ON_ONCE(!data || !total || total > 0xffff))
		return -EINVAL;

	head = vr->free_head;
	if (vr->indirect && total > 1 && vq->num_free)
		indir = pvf_alloc_indirect(total, &indir_ex, gfp);

	ndescs = indir ? 1 : total;
	if (vq->num_free < ndescs) {
		ret = -ENOSPC;
		goto free_indir;
	}

	if (indir) {
		dma_addr_t addr;
		u32 size = total * sizeof(*indir);

		ret = pvf_map_sgs(vr, sgs, out_sgs, in_sgs, total, indir,
				  indir_ex, 0, false, &last, &in_len);
		if (ret < 0)
			goto free_indir;
		if (pvf_map_indirect(vr, indir, size, &addr)) {
			unsigned int k;

			for (k = 0; k < total; k++)
				pvf_unmap_one(vr, &indir_ex[k]);
			ret = -ENOMEM;
			goto free_indir;
		}
		vr->free_head = vr->extra[head].next;
		pvf_set_desc(&vr->desc[head], &vr->extra[head], addr, size,
			     VRING_DESC_F_INDIRECT, vr->free_head);
	} else {
		ret = pvf_map_sgs(vr, sgs, out_sgs, in_sgs, total, vr->desc,
				  vr->extra, head, true, &last, &in_len);
		if (ret < 0)
			return ret;
		vr->free_head = vr->extra[last].next;
	}

	vq->num_free -= ndescs;
	vr->state[head].data = data;
	vr->state[head].indir = indir;
	vr->state[head].indir_extra = indir_ex;
	vr->state[head].in_len = in_len;
	vr->state[head].ndescs = ndescs;

	vr->avail->ring[vr->avail_idx_shadow & (vr->num - 1)] =
		cpu_to_le16(head);
	/*
	 * Descriptors and ring entry before the index: pairs with the
	 * device's read barrier between reading avail->idx and the entries.
	 */
	pvf_wmb(vr);
	vr->avail_idx_shadow++;
	WRITE_ONCE(vr->avail->idx, cpu_to_le16(vr->avail_idx_shadow));
	vr->num_added++;

	/* the device could miss a wrap of num_added: kick early */
	if (unlikely(vr->num_added == 0xffff))
		pvf_vq_kick(vq);
	return 0;

free_indir:
	if (indir) {
		kfree(indir);
		kfree(indir_ex);
	}
	return ret;
}

/**
 * pvf_vq_add_sgs - expose a buffer made of several scatterlists
 * @vq: the virtqueue
 * @sgs: @out_sgs device-readable lists followed by @in_sgs device-writable
 *	 lists, each terminated with sg_mark_end()
 * @out_sgs: number of readable lists
 * @in_sgs: number of writable lists
 * @data: token returned by pvf_vq_get_buf(), must not be NULL
 * @gfp: allocation flags for an indirect table
 *
 * Callers serialise all operations on one queue.  The device is not told
 * until pvf_vq_kick() (or pvf_vq_kick_prepare() + pvf_vq_notify()).
 *
 * Return: 0, -ENOSPC when the ring is full, -EIO when the queue is broken,
 * -ENOMEM when a DMA mapping failed.
 */
int pvf_vq_add_sgs(struct pvf_virtqueue *vq, struct scatterlist *sgs[],
		   unsigned int out_sgs, unsigned int in_sgs,
		   void *data, gfp_t gfp)
{
	unsigned int i, total = 0;
	struct scatterlist *sg;

	for (i = 0; i < out_sgs + in_sgs; i++)
		for (sg = sgs[i]; sg; sg = sg_next(sg))
			total++;
	return pvf_vq_add(vq, sgs, total, out_sgs, in_sgs, data, gfp);
}
PVF_EXPORT(pvf_vq_add_sgs);

/**
 * pvf_vq_add_outbuf - expose a device-readable buffer
 * @vq: the virtqueue
 * @sg: scatterlist of @num entries
 * @num: entries in @sg
 * @data: token returned by pvf_vq_get_buf(), must not be NULL
 * @gfp: allocation flags for an indirect table
 *
 * Return: as pvf_vq_add_sgs().
 */
int pvf_vq_add_outbuf(struct pvf_virtqueue *vq, struct scatterlist *sg,
		      unsigned int num, void *data, gfp_t gfp)
{
	return pvf_vq_add(vq, &sg, num, 1, 0, data, gfp);
}
PVF_EXPORT(pvf_vq_add_outbuf);

/**
 * pvf_vq_add_inbuf - expose a device-writable buffer
 * @vq: the virtqueue
 * @sg: scatterlist of @num entries
 * @num: entries in @sg
 * @data: token returned by pvf_vq_get_buf(), must not be NULL
 * @gfp: allocation flags for an indirect table
 *
 * Return: as pvf_vq_add_sgs().
 */
int pvf_vq_add_inbuf(struct pvf_virtqueue *vq, struct scatterlist *sg,
		     unsigned int num, void *data, gfp_t gfp)
{
	return pvf_vq_add(vq, &sg, num, 0, 1, data, gfp);
}
PVF_EXPORT(pvf_vq_add_inbuf);

/**
 * pvf_vq_kick_prepare - decide whether the device needs a notification
 * @vq: the virtqueue
 *
 * Honours VRING_USED_F_NO_NOTIFY, or avail_event with EVENT_IDX.  Must be
 * serialised with the add functions; pvf_vq_notify() need not be.
 *
 * Return: true if pvf_vq_notify() should be called.
 */
bool pvf_vq_kick_prepare(struct pvf_virtqueue *vq)
{
	struct pvf_vring *vr = to_vring(vq);
	u16 new = vr->avail_idx_shadow;
	u16 old = new - vr->num_added;

	/*
	 * avail->idx visible before we look at the device's wishes: pairs
	 * with the device's full barrier between writing used->flags (or
	 * avail_event) and reading avail->idx again.
	 */
	pvf_mb(vr);
	vr->num_added = 0;
	if (vr->event_idx)
		return vring_need_event(le16_to_cpu(READ_ONCE(*pvf_avail_event(vr))),
					new, old);
	return !(le16_to_cpu(READ_ONCE(vr->used->flags)) &
		 VRING_USED_F_NO_NOTIFY);
}
PVF_EXPORT(pvf_vq_kick_prepare);

/**
 * pvf_vq_notify - notify the device of new buffers
 * @vq: the virtqueue
 *
 * Return: false if the queue is broken or the transport failed.
 */
bool pvf_vq_notify(struct pvf_virtqueue *vq)
{
	struct pvf_vring *vr = to_vring(vq);

	if (unlikely(READ_ONCE(vr->broken)))
		return false;
	if (!vr->notify(vq)) {
		WRITE_ONCE(vr->broken, true);
		return false;
	}
	return true;
}
PVF_EXPORT(pvf_vq_notify);

/**
 * pvf_vq_kick - pvf_vq_kick_prepare() followed by pvf_vq_notify()
 * @vq: the virtqueue
 *
 * Return: false if the queue is broken.
 */
bool pvf_vq_kick(struct pvf_virtqueue *vq)
{
	if (pvf_vq_kick_prepare(vq))
		return pvf_vq_notify(vq);
	return !pvf_vq_is_broken(vq);
}
PVF_EXPORT(pvf_vq_kick);

/* give a chain back to the free list; returns its token */
static void *pvf_detach(struct pvf_vring *vr, u16 head)
{
	struct pvf_desc_state *st = &vr->state[head];
	void *data = st->data;
	u16 i = head;
	unsigned int n;

	if (st->indir) {
		unsigned int cnt = vr->extra[head].len / sizeof(*st->indir);

		for (n = 0; n < cnt; n++)
			pvf_unmap_one(vr, &st->indir_extra[n]);
		kfree(st->indir);
		kfree(st->indir_extra);
	}
	for (n = 0; n < st->ndescs; n++) {
		pvf_unmap_one(vr, &vr->extra[i]);
		if (n + 1 < st->ndescs)
			i = vr->extra[i].next;
	}
	vr->extra[i].next = vr->free_head;
	vr->free_head = head;
	vr->vq.num_free += st->ndescs;
	memset(st, 0, sizeof(*st));
	return data;
}

/**
 * pvf_vq_get_buf - take the next buffer the device has used
 * @vq: the virtqueue
 * @len: set to the number of bytes the device wrote
 *
 * A used element naming a descriptor that is out of range or not in
 * flight breaks the queue: nothing is freed or completed on behalf of it.
 * The length is the device's word, passed on unchecked as the in-tree
 * virtio_ring.c does: it may exceed the buffer's device-writable bytes.
 * A driver that uses it bounds it (drop the packet, count the error); one
 * that ignores it (block) keeps working with such a device.
 *
 * Return: the token given to the add function, or NULL if there is none
 * (or the queue is broken: check pvf_vq_is_broken()).
 */
void *pvf_vq_get_buf(struct pvf_virtqueue *vq, unsigned int *len)
{
	struct pvf_vring *vr = to_vring(vq);
	u16 used_idx, slot;
	u32 id, l;
	void *data;

	if (unlikely(READ_ONCE(vr->broken)))
		return NULL;
	used_idx = pvf_used_idx(vr);
	if (used_idx == vr->last_used_idx)
		return NULL;
	if (unlikely((u16)(used_idx - vr->last_used_idx) > vr->num)) {
		pvf_vq_mark_bad(vr, "used index jumped", used_idx,
				vr->last_used_idx);
		return NULL;
	}
	/*
	 * Read the element only after seeing the index: pairs with the
	 * device's write barrier between the used element and used->idx.
	 */
	pvf_rmb(vr);

	slot = vr->last_used_idx & (vr->num - 1);
	id = le32_to_cpu(READ_ONCE(vr->used->ring[slot].id));
	l = le32_to_cpu(READ_ONCE(vr->used->ring[slot].len));
	pvf_inject(vr, &id, &l);
	if (unlikely(id >= vr->num)) {
		pvf_vq_mark_bad(vr, "used id out of range", id, vr->num);
		return NULL;
	}
	if (unlikely(!vr->state[id].data)) {
		pvf_vq_mark_bad(vr, "used id not in flight", id, 0);
		return NULL;
	}

	data = pvf_detach(vr, id);
	vr->last_used_idx++;
	/*
	 * With callbacks on, ask for the interrupt after this entry; the
	 * full barrier orders the store before the next read of used->idx
	 * and pairs with the device's barrier between writing used->idx and
	 * reading used_event.
	 */
	if (vr->event_idx &&
	    !(vr->avail_flags_shadow & VRING_AVAIL_F_NO_INTERRUPT))
		pvf_store_mb(vr, pvf_used_event(vr),
			     cpu_to_le16(vr->last_used_idx));
	*len = l;
	return data;
}
PVF_EXPORT(pvf_vq_get_buf);

/**
 * pvf_vq_disable_cb - ask the device not to interrupt
 * @vq: the virtqueue
 *
 * Only a hint: the callback may still run once.
 */
void pvf_vq_disable_cb(struct pvf_virtqueue *vq)
{
	struct pvf_vring *vr = to_vring(vq);

	if (vr->avail_flags_shadow & VRING_AVAIL_F_NO_INTERRUPT)
		return;
	vr->avail_flags_shadow |= VRING_AVAIL_F_NO_INTERRUPT;
	if (vr->event_idx)
		/* an index just behind the device's is not reached for 64K */
		WRITE_ONCE(*pvf_used_event(vr),
			   cpu_to_le16(vr->last_used_idx - 1));
	else
		WRITE_ONCE(vr->avail->flags,
			   cpu_to_le16(vr->avail_flags_shadow));
}
PVF_EXPORT(pvf_vq_disable_cb);

/**
 * pvf_vq_enable_cb_prepare - re-enable callbacks, to be checked later
 * @vq: the virtqueue
 *
 * Return: an opaque position for pvf_vq_poll().
 */
unsigned int pvf_vq_enable_cb_prepare(struct pvf_virtqueue *vq)
{
	struct pvf_vring *vr = to_vring(vq);

	if (vr->avail_flags_shadow & VRING_AVAIL_F_NO_INTERRUPT) {
		vr->avail_flags_shadow &= ~VRING_AVAIL_F_NO_INTERRUPT;
		if (!vr->event_idx)
			WRITE_ONCE(vr->avail->flags,
				   cpu_to_le16(vr->avail_flags_shadow));
	}
	if (vr->event_idx)
		WRITE_ONCE(*pvf_used_event(vr),
			   cpu_to_le16(vr->last_used_idx));
	return vr->last_used_idx;
}
PVF_EXPORT(pvf_vq_enable_cb_prepare);

/**
 * pvf_vq_poll - check for used buffers after pvf_vq_enable_cb_prepare()
 * @vq: the virtqueue
 * @last_used: value returned by pvf_vq_enable_cb_prepare()
 *
 * Return: true if buffers were used since (or the queue is broken).
 */
bool pvf_vq_poll(struct pvf_virtqueue *vq, unsigned int last_used)
{
	struct pvf_vring *vr = to_vring(vq);

	if (unlikely(READ_ONCE(vr->broken)))
		return false;
	/*
	 * flags/used_event visible before reading the index: pairs with the
	 * device's full barrier between writing used->idx and reading
	 * avail->flags or used_event.
	 */
	pvf_mb(vr);
	return (u16)last_used != pvf_used_idx(vr);
}
PVF_EXPORT(pvf_vq_poll);

/**
 * pvf_vq_enable_cb - re-enable callbacks, race-free
 * @vq: the virtqueue
 *
 * Return: false if buffers were used meanwhile: the caller must process
 * them (and may disable callbacks again) since no callback may come.
 */
bool pvf_vq_enable_cb(struct pvf_virtqueue *vq)
{
	unsigned int last = pvf_vq_enable_cb_prepare(vq);

	return !pvf_vq_poll(vq, last);
}
PVF_EXPORT(pvf_vq_enable_cb);

/**
 * pvf_vq_enable_cb_delayed - re-enable callbacks after most buffers
 * @vq: the virtqueue
 *
 * With EVENT_IDX, the device interrupts only once about 3/4 of the
 * buffers in flight are used (useful for transmit completion).
 *
 * Return: false if that many were used meanwhile.
 */
bool pvf_vq_enable_cb_delayed(struct pvf_virtqueue *vq)
{
	struct pvf_vring *vr = to_vring(vq);
	u16 bufs;

	if (!vr->event_idx)
		return pvf_vq_enable_cb(vq);
	if (vr->avail_flags_shadow & VRING_AVAIL_F_NO_INTERRUPT)
		vr->avail_flags_shadow &= ~VRING_AVAIL_F_NO_INTERRUPT;
	bufs = (u16)(vr->avail_idx_shadow - vr->last_used_idx) * 3 / 4;
	/* used_event before used->idx is read: pairs as in pvf_vq_poll() */
	pvf_store_mb(vr, pvf_used_event(vr),
		     cpu_to_le16(vr->last_used_idx + bufs));
	if (unlikely(READ_ONCE(vr->broken)))
		return true;
	return (u16)(pvf_used_idx(vr) - vr->last_used_idx) <= bufs;
}
PVF_EXPORT(pvf_vq_enable_cb_delayed);

/**
 * pvf_vq_detach_unused_buf - take back a buffer the device did not use
 * @vq: the virtqueue
 *
 * Only after the device was reset (or for a broken queue after reset).
 *
 * Return: a token, or NULL when no buffer is left.
 */
void *pvf_vq_detach_unused_buf(struct pvf_virtqueue *vq)
{
	struct pvf_vring *vr = to_vring(vq);
	unsigned int i;

	for (i = 0; i < vr->num; i++)
		if (vr->state[i].data)
			return pvf_detach(vr, i);
	return NULL;
}
PVF_EXPORT(pvf_vq_detach_unused_buf);

/**
 * pvf_vq_is_broken - has the queue been marked broken
 * @vq: the virtqueue
 *
 * Return: true when the queue refuses all work.
 */
bool pvf_vq_is_broken(const struct pvf_virtqueue *vq)
{
	return READ_ONCE(to_vring(vq)->broken);
}
PVF_EXPORT(pvf_vq_is_broken);

/**
 * pvf_vq_break - mark a queue broken
 * @vq: the virtqueue
 *
 * Adds fail with -EIO, pvf_vq_get_buf() returns NULL; buffers in flight
 * stay until pvf_vq_detach_unused_buf().
 */
void pvf_vq_break(struct pvf_virtqueue *vq)
{
	WRITE_ONCE(to_vring(vq)->broken, true);
}
PVF_EXPORT(pvf_vq_break);

/**
 * pvf_vq_interrupt - interrupt handler for one virtqueue
 * @irq: interrupt number (unused)
 * @data: the struct pvf_virtqueue
 *
 * Return: IRQ_NONE if nothing was used (shared interrupt lines).
 */
irqreturn_t pvf_vq_interrupt(int irq, void *data)
{
	struct pvf_virtqueue *vq = data;
	struct pvf_vring *vr = to_vring(vq);

	/* a broken queue still calls back so the driver can fail requests */
	if (!READ_ONCE(vr->broken) && !pvf_more_used(vr))
		return IRQ_NONE;
	if (vq->callback)
		vq->callback(vq);
	return IRQ_HANDLED;
}
PVF_EXPORT(pvf_vq_interrupt);

/* ring memory, zeroed, and the address the device is given for it */
static void *pvf_alloc_ring(struct pvf_vring *vr, size_t size,
			    dma_addr_t *dma)
{
	phys_addr_t phys;
	void *ring;

	if (vr->use_dma_api)
		return dma_alloc_coherent(vr->dma_dev, size, dma, GFP_KERNEL);

	ring = alloc_pages_exact(PAGE_ALIGN(size), GFP_KERNEL | __GFP_ZERO);
	if (!ring)
		return NULL;
	phys = virt_to_phys(ring);
	*dma = (dma_addr_t)phys;
	/* a 32-bit dma_addr_t cannot carry a PAE address above 4 GiB */
	if (WARN_ON_ONCE((phys_addr_t)*dma != phys)) {
		free_pages_exact(ring, PAGE_ALIGN(size));
		return NULL;
	}
	return ring;
}

static void pvf_free_ring(struct pvf_vring *vr, size_t size, void *ring,
			  dma_addr_t dma)
{
	if (vr->use_dma_api)
		dma_free_coherent(vr->dma_dev, size, ring, dma);
	else
		free_pages_exact(ring, PAGE_ALIGN(size));
}

/**
 * pvf_vq_new - create a split virtqueue
 * @vdev: owning device; INDIRECT_DESC, EVENT_IDX, ACCESS_PLATFORM and
 *	  ORDER_PLATFORM are taken from its negotiated features
 * @dma_dev: device used for DMA mappings (the PCI function), used only
 *	     when VIRTIO_F_ACCESS_PLATFORM was negotiated
 * @index: queue index
 * @num: ring size, a power of 2 up to 32768
 * @notify: transport notification
 * @callback: used-buffer callback or NULL
 * @name: queue name
 *
 * The queue is added to @vdev->vqs.
 *
 * Return: the queue or an ERR_PTR().
 */
struct pvf_virtqueue *pvf_vq_new(struct pvf_device *vdev,
				 struct device *dma_dev, unsigned int index,
				 unsigned int num, pvf_vq_notify_t notify,
				 pvf_vq_callback_t callback, const char *name)
{
	unsigned long flags;
	struct pvf_vring *vr;
	unsigned int i;

	if (!num || !is_power_of_2(num) || num > 32768)
		return ERR_PTR(-EINVAL);

	vr = kzalloc(sizeof(*vr), GFP_KERNEL);
	if (!vr)
		return ERR_PTR(-ENOMEM);
	vr->dma_dev = dma_dev;
	vr->notify = notify;
	vr->num = num;
	vr->use_dma_api = pvf_use_dma_api(vdev);
	vr->weak_barriers = !pvf_has_feature(vdev, VIRTIO_F_ORDER_PLATFORM);
	vr->indirect = pvf_has_feature(vdev, VIRTIO_RING_F_INDIRECT_DESC);
	vr->event_idx = pvf_has_feature(vdev, VIRTIO_RING_F_EVENT_IDX);
	vr->vq.vdev = vdev;
	vr->vq.callback = callback;
	vr->vq.name = name;
	vr->vq.index = index;
	vr->vq.num_free = num;

	vr->desc_size = num * sizeof(struct pvf_vring_desc);
	vr->avail_size = sizeof(struct pvf_vring_avail) + (num + 1) * 2;
	vr->used_size = sizeof(struct pvf_vring_used) +
			num * sizeof(struct pvf_vring_used_elem) + 2;

	vr->desc = pvf_alloc_ring(vr, vr->desc_size, &vr->desc_dma);
	if (!vr->desc)
		goto err;
	vr->avail = pvf_alloc_ring(vr, vr->avail_size, &vr->avail_dma);
	if (!vr->avail)
		goto err_desc;
	vr->used = pvf_alloc_ring(vr, vr->used_size, &vr->used_dma);
	if (!vr->used)
		goto err_avail;
	vr->extra = kcalloc(num, sizeof(*vr->extra), GFP_KERNEL);
	if (!vr->extra)
		goto err_used;
	vr->state = kcalloc(num, sizeof(*vr->state), GFP_KERNEL);
	if (!vr->state)
		goto err_extra;

	for (i = 0; i < num - 1; i++)
		vr->extra[i].next = i + 1;
	/* no callback wanted: start with interrupts suppressed */
	if (!callback)
		pvf_vq_disable_cb(&vr->vq);

	spin_lock_irqsave(&vdev->vqs_lock, flags);
	list_add_tail(&vr->vq.list, &vdev->vqs);
	spin_unlock_irqrestore(&vdev->vqs_lock, flags);
	return &vr->vq;

err_extra:
	kfree(vr->extra);
err_used:
	pvf_free_ring(vr, vr->used_size, vr->used, vr->used_dma);
err_avail:
	pvf_free_ring(vr, vr->avail_size, vr->avail, vr->avail_dma);
err_desc:
	pvf_free_ring(vr, vr->desc_size, vr->desc, vr->desc_dma);
err:
	kfree(vr);
	return ERR_PTR(-ENOMEM);
}
PVF_EXPORT(pvf_vq_new);

/**
 * pvf_vq_del - free a virtqueue
 * @vq: the virtqueue; the device must no longer use it (reset)
 *
 * Buffers still in flight are unmapped and dropped.
 */
void pvf_vq_del(struct pvf_virtqueue *vq)
{
	struct pvf_vring *vr = to_vring(vq);
	struct pvf_device *vdev = vq->vdev;
	unsigned int leaked = 0;
	unsigned long flags;

	while (pvf_vq_detach_unused_buf(vq))
		leaked++;
	if (leaked)
		dev_warn(&vdev->dev, "%s: dropped %u buffers\n", vq->name,
			 leaked);

	spin_lock_irqsave(&vdev->vqs_lock, flags);
	list_del(&vq->list);
	spin_unlock_irqrestore(&vdev->vqs_lock, flags);

	kfree(vr->state);
	kfree(vr->extra);
	pvf_free_ring(vr, vr->used_size, vr->used, vr->used_dma);
	pvf_free_ring(vr, vr->avail_size, vr->avail, vr->avail_dma);
	pvf_free_ring(vr, vr->desc_size, vr->desc, vr->desc_dma);
	kfree(vr);
}
PVF_EXPORT(pvf_vq_del);

/**
 * pvf_vq_desc_addr - bus address of the descriptor table
 * @vq: the virtqueue
 *
 * Return: DMA address for the transport.
 */
dma_addr_t pvf_vq_desc_addr(const struct pvf_virtqueue *vq)
{
	return to_vring(vq)->desc_dma;
}
PVF_EXPORT(pvf_vq_desc_addr);

/**
 * pvf_vq_driver_addr - bus address of the available (driver) ring
 * @vq: the virtqueue
 *
 * Return: DMA address for the transport.
 */
dma_addr_t pvf_vq_driver_addr(const struct pvf_virtqueue *vq)
{
	return to_vring(vq)->avail_dma;
}
PVF_EXPORT(pvf_vq_driver_addr);

/**
 * pvf_vq_device_addr - bus address of the used (device) ring
 * @vq: the virtqueue
 *
 * Return: DMA address for the transport.
 */
dma_addr_t pvf_vq_device_addr(const struct pvf_virtqueue *vq)
{
	return to_vring(vq)->used_dma;
}
PVF_EXPORT(pvf_vq_device_addr);

/**
 * pvf_vq_max_mapping_size - largest buffer segment the queue can map
 * @vq: the virtqueue
 *
 * Return: the DMA layer's limit (e.g. a swiotlb slot run) when the queue
 * uses the DMA API, SIZE_MAX when the device is given physical addresses.
 */
size_t pvf_vq_max_mapping_size(const struct pvf_virtqueue *vq)
{
	const struct pvf_vring *vr = to_vring(vq);

	if (!vr->use_dma_api)
		return SIZE_MAX;
	return dma_max_mapping_size(vr->dma_dev);
}
PVF_EXPORT(pvf_vq_max_mapping_size);

/**
 * pvf_vq_size - number of descriptors in the ring
 * @vq: the virtqueue
 *
 * Return: the ring size.
 */
unsigned int pvf_vq_size(const struct pvf_virtqueue *vq)
{
	return to_vring(vq)->num;
}
PVF_EXPORT(pvf_vq_size);
