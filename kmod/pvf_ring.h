/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pvf_ring.h - split virtqueues (VIRTIO 1.x section 2.7) for pvfront.
 *
 * The ring does no locking of its own: callers serialise add/get/kick
 * on one queue, exactly like the in-tree virtio_ring.
 */
#ifndef _PVF_RING_H
#define _PVF_RING_H

#include <linux/types.h>
#include <linux/list.h>
#include <linux/interrupt.h>
#include <linux/scatterlist.h>

struct pvf_device;
struct pvf_virtqueue;

typedef void (*pvf_vq_callback_t)(struct pvf_virtqueue *vq);
typedef bool (*pvf_vq_notify_t)(struct pvf_virtqueue *vq);

/**
 * struct pvf_virtqueue - the public part of a virtqueue
 * @list: entry in the owning device's @vqs list
 * @vdev: owning device
 * @callback: called from interrupt context when buffers were used
 * @name: queue name, for messages and interrupt names
 * @index: queue index on the device
 * @num_free: free descriptors in the ring
 * @priv: free for the driver using the queue
 */
struct pvf_virtqueue {
	struct list_head list;
	struct pvf_device *vdev;
	pvf_vq_callback_t callback;
	const char *name;
	unsigned int index;
	unsigned int num_free;
	void *priv;
};

struct pvf_virtqueue *pvf_vq_new(struct pvf_device *vdev,
				 struct device *dma_dev, unsigned int index,
				 unsigned int num, pvf_vq_notify_t notify,
				 pvf_vq_callback_t callback, const char *name);
void pvf_vq_del(struct pvf_virtqueue *vq);

dma_addr_t pvf_vq_desc_addr(const struct pvf_virtqueue *vq);
dma_addr_t pvf_vq_driver_addr(const struct pvf_virtqueue *vq);
dma_addr_t pvf_vq_device_addr(const struct pvf_virtqueue *vq);
unsigned int pvf_vq_size(const struct pvf_virtqueue *vq);
size_t pvf_vq_max_mapping_size(const struct pvf_virtqueue *vq);

int pvf_vq_add_sgs(struct pvf_virtqueue *vq, struct scatterlist *sgs[],
		   unsigned int out_sgs, unsigned int in_sgs,
		   void *data, gfp_t gfp);
int pvf_vq_add_outbuf(struct pvf_virtqueue *vq, struct scatterlist *sg,
		      unsigned int num, void *data, gfp_t gfp);
int pvf_vq_add_inbuf(struct pvf_virtqueue *vq, struct scatterlist *sg,
		     unsigned int num, void *data, gfp_t gfp);

bool pvf_vq_kick_prepare(struct pvf_virtqueue *vq);
bool pvf_vq_notify(struct pvf_virtqueue *vq);
bool pvf_vq_kick(struct pvf_virtqueue *vq);

void *pvf_vq_get_buf(struct pvf_virtqueue *vq, unsigned int *len);
void *pvf_vq_detach_unused_buf(struct pvf_virtqueue *vq);

void pvf_vq_disable_cb(struct pvf_virtqueue *vq);
unsigned int pvf_vq_enable_cb_prepare(struct pvf_virtqueue *vq);
bool pvf_vq_poll(struct pvf_virtqueue *vq, unsigned int last_used);
bool pvf_vq_enable_cb(struct pvf_virtqueue *vq);
bool pvf_vq_enable_cb_delayed(struct pvf_virtqueue *vq);

bool pvf_vq_is_broken(const struct pvf_virtqueue *vq);
void pvf_vq_break(struct pvf_virtqueue *vq);

irqreturn_t pvf_vq_interrupt(int irq, void *data);

#endif /* _PVF_RING_H */
