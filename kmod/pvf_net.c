// SPDX-License-Identifier: GPL-2.0
/*
 * pvf_net.c - virtio network driver on the pvf_virtio bus
 *
 * One receive and one transmit queue (no multiqueue), both completed from
 * NAPI; checksum and TCP segmentation offloads both ways, receive through
 * mergeable page buffers, byte queue limits on transmit.  The control
 * queue carries the receive mode, the MAC filter table and address, the
 * VLAN filter, the receive offloads and the acknowledgment of a link
 * announcement.  Interfaces are named pvnet%d by default so they are easy
 * to tell from virtio_net ones.
 */
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/netdevice.h>
#include <linux/etherdevice.h>
#include <linux/ethtool.h>
#include <linux/if_vlan.h>
#include <linux/u64_stats_sync.h>
#include <linux/rtnetlink.h>
#include <linux/delay.h>
#include <linux/virtio_net.h>
#include <linux/average.h>
#define PVF_COMPAT_NET
#include "pvf_compat.h"
#include "pvf_virtio.h"

#define PVF_NET_RX		0
#define PVF_NET_TX		1
#define PVF_NET_CTRL		2	/* without MQ it follows the one pair */
#define PVF_NET_TX_SG		(MAX_SKB_FRAGS + 2)
/* mergeable receive: bytes of a packet's start copied into the skb head */
#define PVF_NET_COPY_LEN	128
/* the smallest mergeable buffer takes a whole frame of the default MTU */
#define PVF_NET_GOOD_PACKET_LEN	(ETH_HLEN + VLAN_HLEN + ETH_DATA_LEN)
/*
 * Mergeable buffers start and end on this alignment, which leaves the low
 * bits of a buffer's address free to carry its size in the ring's token.
 */
#define PVF_NET_BUF_ALIGN	256

/* the average length of received packets, which sizes mergeable buffers */
DECLARE_EWMA(pvf_pkt_len, 0, 64)

static char *ifname = "pvnet%d";
module_param(ifname, charp, 0444);
MODULE_PARM_DESC(ifname,
		 "Interface name pattern, %d is replaced (default: pvnet%d; eth%d gives kernel-style names)");

static unsigned int tx_timeout_ms = 5000;
module_param(tx_timeout_ms, uint, 0644);
MODULE_PARM_DESC(tx_timeout_ms,
		 "Transmit watchdog timeout in ms, applied when an interface goes up (default: 5000)");

static unsigned int ctrl_timeout_ms = 5000;
module_param(ctrl_timeout_ms, uint, 0644);
MODULE_PARM_DESC(ctrl_timeout_ms,
		 "How long a control queue command may wait for the device before the device is taken for broken, in ms (default: 5000)");

#ifdef PVF_TEST_HOOKS
/*
 * Test hooks, only in test builds (kmod/README.md), for the
 * transmit-timeout recovery tests: a device that stops completing
 * transmits and a restart that fails are hard to get from QEMU on demand.
 */
static bool test_stall_tx;
module_param(test_stall_tx, bool, 0644);
MODULE_PARM_DESC(test_stall_tx,
		 "testing only: stop the TX queue after each packet and never reap or wake it (cleared by the next reset)");

static int test_fail_restarts;
module_param(test_fail_restarts, int, 0644);
MODULE_PARM_DESC(test_fail_restarts,
		 "testing only: make the next N device restarts after a transmit timeout fail");

static unsigned int test_reset_delay_ms;
module_param(test_reset_delay_ms, uint, 0644);
MODULE_PARM_DESC(test_reset_delay_ms,
		 "testing only: delay the reset work by this many ms before it takes RTNL");

static bool test_mute_ctrl;
module_param(test_mute_ctrl, bool, 0644);
MODULE_PARM_DESC(test_mute_ctrl,
		 "testing only: queue control commands without notifying the device, which then never answers");

static bool pvf_net_test_stall_tx(void)
{
	return READ_ONCE(test_stall_tx);
}

static void pvf_net_test_unstall_tx(void)
{
	WRITE_ONCE(test_stall_tx, false);
}

static bool pvf_net_test_fail_restart(void)
{
	int n = READ_ONCE(test_fail_restarts);

	if (n <= 0)
		return false;
	WRITE_ONCE(test_fail_restarts, n - 1);
	return true;
}

static void pvf_net_test_delay_reset(void)
{
	if (test_reset_delay_ms)
		msleep(test_reset_delay_ms);
}

static bool pvf_net_test_mute_ctrl(void)
{
	return READ_ONCE(test_mute_ctrl);
}
#else
static inline bool pvf_net_test_stall_tx(void)
{
	return false;
}

static inline void pvf_net_test_unstall_tx(void)
{
}

static inline bool pvf_net_test_fail_restart(void)
{
	return false;
}

static inline void pvf_net_test_delay_reset(void)
{
}

static inline bool pvf_net_test_mute_ctrl(void)
{
	return false;
}
#endif

/* virtio_net_hdr_mrg_rxbuf: the VIRTIO 1.x header, little-endian */
struct pvf_net_hdr {
	u8 flags;
	u8 gso_type;
	__le16 hdr_len;
	__le16 gso_size;
	__le16 csum_start;
	__le16 csum_offset;
	__le16 num_buffers;
};

/*
 * A control command's header, ack and fixed-size payload (virtio 1.2,
 * 5.1.6.5); kmalloc'd, since the device reads and writes it by DMA.
 */
struct pvf_net_ctrl {
	struct virtio_net_ctrl_hdr hdr;
	virtio_net_ctrl_ack status;
	union {
		u8 on;
		u8 mac[ETH_ALEN];
		__le16 vid;
		__le64 offloads;
	} data;
};

/* virtio_net_ctrl_mac: a MAC filter table, little-endian as in VIRTIO 1.x */
struct pvf_net_mac_table {
	__le32 entries;
	u8 macs[][ETH_ALEN];
} __packed;

struct pvf_net_stats {
	struct u64_stats_sync syncp;
	u64 packets;
	u64 bytes;
	u64 drops;
	u64 errors;
	u64 kicks;
	u64 timeouts;
};

struct pvf_net_queue {
	struct pvf_virtqueue *vq;
	struct napi_struct napi;
	struct pvf_net_stats stats;
	struct scatterlist sg[PVF_NET_TX_SG];
	char name[16];
	/* receive, MRG_RXBUF: buffers are cut from @frag's pages */
	struct page_frag frag;
	struct ewma_pvf_pkt_len avg_len;
};

struct pvf_net {
	struct pvf_device *vdev;
	struct net_device *dev;
	struct pvf_net_queue rq;
	struct pvf_net_queue sq;
	struct pvf_virtqueue *cvq;	/* CTRL_VQ only */
	struct pvf_net_ctrl *ctrl;	/* one command at a time: RTNL */
	struct completion ctrl_done;	/* the control queue's callback */
	struct work_struct rx_mode_work;
	unsigned long active_vlans[BITS_TO_LONGS(VLAN_N_VID)];
	u64 guest_offloads;		/* the device may send these now */
	u64 guest_offloads_capable;	/* negotiated, CTRL_GUEST_OFFLOADS */
	unsigned int rx_buf_len;	/* without MRG_RXBUF: one frame each */
	bool mergeable;		/* MRG_RXBUF: buffers sized by @rq.avg_len */
	bool guest_gso;		/* the device may send us GSO packets */
	struct delayed_work refill_work;
	spinlock_t refill_lock;		/* protects refill_enabled */
	bool refill_enabled;
	struct work_struct reset_work;
	bool up;		/* ndo_open ran, ndo_stop not yet (RTNL) */
	bool napi_on;		/* both NAPIs enabled (RTNL) */
	bool removing;		/* remove started, no more resets (RTNL) */
};

static const u32 pvf_net_id_table[] = { VIRTIO_ID_NET, 0 };

static const unsigned int pvf_net_features[] = {
	VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MTU,
	VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS,
	VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN,
	VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_GUEST_TSO4,
	VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN,
	VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VLAN,
	VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_CTRL_MAC_ADDR,
	VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
};

/* what CTRL_GUEST_OFFLOADS switches when GRO_HW (and RXCSUM) go off */
#define PVF_NET_GUEST_GSO	(BIT_ULL(VIRTIO_NET_F_GUEST_TSO4) | \
				 BIT_ULL(VIRTIO_NET_F_GUEST_TSO6) | \
				 BIT_ULL(VIRTIO_NET_F_GUEST_ECN))
#define PVF_NET_GUEST_OFFLOADS	(PVF_NET_GUEST_GSO | \
				 BIT_ULL(VIRTIO_NET_F_GUEST_CSUM))

static const char pvf_net_stat_names[][ETH_GSTRING_LEN] = {
	"rx0_packets", "rx0_bytes", "rx0_drops", "rx0_errors", "rx0_kicks",
	"tx0_packets", "tx0_bytes", "tx0_drops", "tx0_errors", "tx0_kicks",
	"tx0_timeouts",
};

#define PVF_NET_NSTATS ARRAY_SIZE(pvf_net_stat_names)

static void pvf_net_stat_add(struct pvf_net_stats *st, u64 *field, u64 v)
{
	u64_stats_update_begin(&st->syncp);
	*field += v;
	u64_stats_update_end(&st->syncp);
}

static void pvf_net_napi_schedule(struct napi_struct *napi,
				  struct pvf_virtqueue *vq)
{
	if (napi_schedule_prep(napi)) {
		pvf_vq_disable_cb(vq);
		__napi_schedule(napi);
	}
}

/* a queue broke (bad used ring, device gone): stop using the device */
static void pvf_net_broken(struct pvf_net *vi)
{
	if (!pvf_device_is_broken(vi->vdev)) {
		netdev_err(vi->dev, "device broken, taking the link down\n");
		pvf_break_device(vi->vdev);
	}
	netif_carrier_off(vi->dev);
}

static void pvf_net_vq_done(struct pvf_virtqueue *vq)
{
	struct pvf_net *vi = vq->vdev->priv;
	struct pvf_net_queue *q = vq->index == PVF_NET_RX ? &vi->rq : &vi->sq;

	pvf_net_napi_schedule(&q->napi, vq);
}

/* ---- receive ----------------------------------------------------------- */

/*
 * A mergeable buffer's token: its address, whose alignment leaves room
 * for its size in units of PVF_NET_BUF_ALIGN, less one.
 */
static void *pvf_net_mrg_token(void *buf, unsigned int size)
{
	BUILD_BUG_ON(2 * PAGE_SIZE > PVF_NET_BUF_ALIGN * PVF_NET_BUF_ALIGN);
	return (void *)((unsigned long)buf | (size / PVF_NET_BUF_ALIGN - 1));
}

static void *pvf_net_mrg_buf(void *token)
{
	return (void *)((unsigned long)token & ~(PVF_NET_BUF_ALIGN - 1UL));
}

static unsigned int pvf_net_mrg_size(void *token)
{
	return (((unsigned long)token & (PVF_NET_BUF_ALIGN - 1)) + 1) *
	       PVF_NET_BUF_ALIGN;
}

static void pvf_net_put_mrg(void *token)
{
	put_page(virt_to_head_page(pvf_net_mrg_buf(token)));
}

/*
 * The size of the next mergeable buffers, as in-tree
 * get_mergeable_buf_len(): the average packet and its header, at least a
 * full frame and at most a page, so a stream of MTU-sized frames costs
 * about 1.5 KiB of memory each instead of a page, and a GSO packet takes
 * few buffers.
 */
static unsigned int pvf_net_mrg_len(struct pvf_net *vi)
{
	const unsigned int hdr = sizeof(struct pvf_net_hdr);
	unsigned int avg = ewma_pvf_pkt_len_read(&vi->rq.avg_len);

	return ALIGN(hdr + clamp_t(unsigned int, avg, PVF_NET_GOOD_PACKET_LEN,
				   PAGE_SIZE - hdr), PVF_NET_BUF_ALIGN);
}

/*
 * With MRG_RXBUF the buffers are cut from page fragments (lowmem, so
 * page_address() works on i386 too), each holding a reference to its
 * page; a tail too short for another buffer goes with the last one.
 */
static int pvf_net_add_rx_mergeable(struct pvf_net *vi, gfp_t gfp)
{
	struct page_frag *frag = &vi->rq.frag;
	unsigned int len = pvf_net_mrg_len(vi), hole;
	void *buf;
	int err;

	if (unlikely(!skb_page_frag_refill(len, frag, gfp)))
		return -ENOMEM;
	buf = page_address(frag->page) + frag->offset;
	get_page(frag->page);
	frag->offset += len;
	hole = frag->size - frag->offset;
	if (hole < len) {
		len += hole;
		frag->offset += hole;
	}
	sg_init_one(vi->rq.sg, buf, len);
	err = pvf_vq_add_inbuf(vi->rq.vq, vi->rq.sg, 1,
			       pvf_net_mrg_token(buf, len), gfp);
	if (err)
		put_page(virt_to_head_page(buf));
	return err;
}

/* the reference the fragment keeps on its current page */
static void pvf_net_free_frag(struct pvf_net *vi)
{
	if (vi->rq.frag.page) {
		put_page(vi->rq.frag.page);
		vi->rq.frag.page = NULL;
	}
}

static void pvf_net_free_rx_buf(struct pvf_net *vi, void *buf)
{
	if (vi->mergeable)
		pvf_net_put_mrg(buf);
	else
		dev_kfree_skb_any(buf);
}

static int pvf_net_add_rx(struct pvf_net *vi, gfp_t gfp)
{
	struct sk_buff *skb;
	int err;

	if (vi->mergeable)
		return pvf_net_add_rx_mergeable(vi, gfp);
	skb = __netdev_alloc_skb_ip_align(vi->dev, vi->rx_buf_len, gfp);
	if (!skb)
		return -ENOMEM;
	sg_init_one(vi->rq.sg, skb->data, vi->rx_buf_len);
	err = pvf_vq_add_inbuf(vi->rq.vq, vi->rq.sg, 1, skb, gfp);
	if (err)
		dev_kfree_skb_any(skb);
	return err;
}

static void pvf_net_schedule_refill(struct pvf_net *vi, unsigned long delay)
{
	spin_lock_bh(&vi->refill_lock);
	if (vi->refill_enabled)
		schedule_delayed_work(&vi->refill_work, delay);
	spin_unlock_bh(&vi->refill_lock);
}

/* close and reset: no refill may run once NAPI gets disabled */
static void pvf_net_set_refill(struct pvf_net *vi, bool on)
{
	spin_lock_bh(&vi->refill_lock);
	vi->refill_enabled = on;
	spin_unlock_bh(&vi->refill_lock);
	if (!on)
		cancel_delayed_work_sync(&vi->refill_work);
}

/* fill the receive ring; false if memory ran out */
static bool pvf_net_refill(struct pvf_net *vi, gfp_t gfp)
{
	int err = 0;
	bool added = false;

	while (vi->rq.vq->num_free) {
		err = pvf_net_add_rx(vi, gfp);
		if (err)
			break;
		added = true;
	}
	if (added && pvf_vq_kick_prepare(vi->rq.vq)) {
		pvf_vq_notify(vi->rq.vq);
		pvf_net_stat_add(&vi->rq.stats, &vi->rq.stats.kicks, 1);
	}
	return err != -ENOMEM;
}

static void pvf_net_refill_work(struct work_struct *work)
{
	struct pvf_net *vi = container_of(work, struct pvf_net,
					  refill_work.work);
	bool ok;

	napi_disable(&vi->rq.napi);
	ok = pvf_net_refill(vi, GFP_KERNEL);
	napi_enable(&vi->rq.napi);
	/* the ring may have had nothing to complete: poll once */
	local_bh_disable();
	pvf_net_napi_schedule(&vi->rq.napi, vi->rq.vq);
	local_bh_enable();
	if (!ok)
		pvf_net_schedule_refill(vi, HZ / 2);
}

static void pvf_net_rx_error(struct pvf_net *vi)
{
	pvf_net_stat_add(&vi->rq.stats, &vi->rq.stats.errors, 1);
}

/*
 * The header's offloads, checked like in-tree (virtio_net_hdr_to_skb():
 * GSO type, size and checksum offsets); a GSO packet the driver never
 * asked for, or a plain one beyond the largest MTU, is a device error.
 * false: drop the packet.
 */
static bool pvf_net_apply_hdr(struct pvf_net *vi, struct sk_buff *skb,
			      const struct pvf_net_hdr *hdr)
{
	if (hdr->gso_type != VIRTIO_NET_HDR_GSO_NONE && !vi->guest_gso)
		return false;
	/*
	 * A frame no MTU of the interface allows; with VIRTIO_NET_F_MTU the
	 * device must not send one (virtio 1.2, 5.1.6.3.2).
	 */
	if (hdr->gso_type == VIRTIO_NET_HDR_GSO_NONE &&
	    skb->len > vi->dev->max_mtu + VLAN_ETH_HLEN)
		return false;
	/* with rx-checksumming off the stack checks what the device did */
	if (hdr->flags & VIRTIO_NET_HDR_F_DATA_VALID &&
	    vi->dev->features & NETIF_F_RXCSUM)
		skb->ip_summed = CHECKSUM_UNNECESSARY;
	BUILD_BUG_ON(offsetof(struct pvf_net_hdr, num_buffers) !=
		     sizeof(struct virtio_net_hdr));
	return !virtio_net_hdr_to_skb(skb, (const struct virtio_net_hdr *)hdr,
				      true);
}

static void pvf_net_deliver(struct pvf_net *vi, struct sk_buff *skb,
			    const struct pvf_net_hdr *hdr)
{
	struct pvf_net_stats *st = &vi->rq.stats;

	if (unlikely(!pvf_net_apply_hdr(vi, skb, hdr))) {
		netdev_dbg(vi->dev, "rx header refused: flags %u gso %u/%u, %u bytes\n",
			   hdr->flags, hdr->gso_type, le16_to_cpu(hdr->gso_size),
			   skb->len);
		pvf_net_rx_error(vi);
		dev_kfree_skb(skb);
		return;
	}
	skb->protocol = eth_type_trans(skb, vi->dev);

	u64_stats_update_begin(&st->syncp);
	st->packets++;
	st->bytes += skb->len;
	u64_stats_update_end(&st->syncp);
	napi_gro_receive(&vi->rq.napi, skb);
}

static void pvf_net_receive_small(struct pvf_net *vi, struct sk_buff *skb,
				  unsigned int len)
{
	struct pvf_net_hdr hdr;

	/*
	 * The length is the device's word (pvf_vq_get_buf()): one beyond
	 * the buffer drops the packet, as drivers/net/virtio_net.c does.
	 */
	if (unlikely(len < sizeof(hdr) + ETH_HLEN || len > vi->rx_buf_len)) {
		netdev_dbg(vi->dev, "rx length %u outside [%zu, %u], dropped\n",
			   len, sizeof(hdr) + ETH_HLEN, vi->rx_buf_len);
		pvf_net_rx_error(vi);
		dev_kfree_skb(skb);
		return;
	}
	memcpy(&hdr, skb->data, sizeof(hdr));
	skb_put(skb, len);
	skb_pull(skb, sizeof(hdr));
	pvf_net_deliver(vi, skb, &hdr);
}

/* the rest of a packet that is being dropped: its buffers go back */
static void pvf_net_drop_buffers(struct pvf_net *vi, unsigned int left)
{
	unsigned int len;
	void *token;

	while (left--) {
		token = pvf_vq_get_buf(vi->rq.vq, &len);
		if (!token)
			break;
		pvf_net_put_mrg(token);
	}
}

/*
 * One more buffer of a packet: merged into the last frag when it follows
 * it in the same page, else a new frag; when the skb's frags are full the
 * packet goes on in a frag_list skb (in-tree receive_mergeable() does the
 * same), so buffers smaller than a page still carry a 64 KiB packet.
 * The buffer's page reference goes to the skb either way.
 */
static int pvf_net_add_rx_frag(struct sk_buff *head, struct sk_buff **curr,
			       struct page *page, unsigned int offset,
			       unsigned int len, unsigned int truesize)
{
	struct sk_buff *skb = *curr;
	int i = skb_shinfo(skb)->nr_frags;

	if (i && skb_can_coalesce(skb, i, page, offset)) {
		put_page(page);	/* the frag holds one already */
		skb_coalesce_rx_frag(skb, i - 1, len, truesize);
	} else {
		if (i == MAX_SKB_FRAGS) {
			struct sk_buff *next = alloc_skb(0, GFP_ATOMIC);

			if (unlikely(!next))
				return -ENOMEM;
			if (skb == head)
				skb_shinfo(head)->frag_list = next;
			else
				skb->next = next;
			head->truesize += next->truesize;
			*curr = skb = next;
			i = 0;
		}
		skb_add_rx_frag(skb, i, page, offset, len, truesize);
	}
	if (skb != head) {
		head->data_len += len;
		head->len += len;
		head->truesize += truesize;
	}
	return 0;
}

/*
 * The first buffer holds the header (num_buffers says how many buffers
 * the packet spans) and the packet's start, whose first bytes are copied
 * into the skb head; the rest of every buffer becomes a frag.  Every
 * length and count is the device's word and is checked before it is used:
 * no buffer is read or attached beyond the size its token records, and a
 * packet cannot span more buffers than the ring holds.
 */
static void pvf_net_receive_mergeable(struct pvf_net *vi, void *token,
				      unsigned int len)
{
	unsigned int size = pvf_net_mrg_size(token);
	void *buf = pvf_net_mrg_buf(token);
	struct page *page = virt_to_head_page(buf);
	struct sk_buff *skb, *curr;
	struct pvf_net_hdr hdr;
	unsigned int copy, left;

	if (unlikely(len < sizeof(hdr) + ETH_HLEN || len > size)) {
		netdev_dbg(vi->dev, "rx length %u outside [%zu, %u], dropped\n",
			   len, sizeof(hdr) + ETH_HLEN, size);
		goto drop_page;
	}
	memcpy(&hdr, buf, sizeof(hdr));
	left = le16_to_cpu(hdr.num_buffers);
	if (unlikely(!left || left > pvf_vq_size(vi->rq.vq))) {
		netdev_dbg(vi->dev, "rx packet of %u buffers, dropped\n", left);
		goto drop_page;
	}
	left--;
	skb = napi_alloc_skb(&vi->rq.napi, PVF_NET_COPY_LEN);
	if (unlikely(!skb))
		goto drop_packet;
	len -= sizeof(hdr);
	copy = min_t(unsigned int, len, PVF_NET_COPY_LEN);
	skb_put_data(skb, buf + sizeof(hdr), copy);
	if (len > copy)
		skb_add_rx_frag(skb, 0, page,
				buf - page_address(page) + sizeof(hdr) + copy,
				len - copy, size);
	else
		put_page(page);

	for (curr = skb; left; ) {
		token = pvf_vq_get_buf(vi->rq.vq, &len);
		if (unlikely(!token)) {
			netdev_dbg(vi->dev, "rx packet %u buffers short\n", left);
			goto drop_skb;
		}
		left--;
		size = pvf_net_mrg_size(token);
		buf = pvf_net_mrg_buf(token);
		page = virt_to_head_page(buf);
		if (unlikely(!len || len > size)) {
			netdev_dbg(vi->dev, "rx buffer of %u bytes outside [1, %u], dropped\n",
				   len, size);
			put_page(page);
			goto drop_rest;
		}
		if (unlikely(pvf_net_add_rx_frag(skb, &curr, page,
						 buf - page_address(page),
						 len, size))) {
			put_page(page);
			goto drop_rest;
		}
	}
	ewma_pvf_pkt_len_add(&vi->rq.avg_len, skb->len);
	pvf_net_deliver(vi, skb, &hdr);
	return;

drop_rest:
	pvf_net_drop_buffers(vi, left);
drop_skb:
	dev_kfree_skb(skb);
	pvf_net_rx_error(vi);
	return;
drop_packet:
	pvf_net_drop_buffers(vi, left);
drop_page:
	put_page(page);
	pvf_net_rx_error(vi);
}

/*
 * Leave polling mode: prepare the callback before napi_complete_done() so
 * a buffer used in between is seen by pvf_vq_poll(); if NAPI did not let
 * go (busy polling, or scheduled again), callbacks stay off.
 */
static void pvf_net_napi_complete(struct napi_struct *napi,
				  struct pvf_virtqueue *vq, int done)
{
	unsigned int last = pvf_vq_enable_cb_prepare(vq);

	if (napi_complete_done(napi, done)) {
		if (unlikely(pvf_vq_poll(vq, last)))
			pvf_net_napi_schedule(napi, vq);
	} else {
		pvf_vq_disable_cb(vq);
	}
}

static int pvf_net_rx_poll(struct napi_struct *napi, int budget)
{
	struct pvf_net *vi = container_of(napi, struct pvf_net, rq.napi);
	struct pvf_virtqueue *vq = vi->rq.vq;
	unsigned int len;
	int done = 0;
	void *buf;

	while (done < budget && (buf = pvf_vq_get_buf(vq, &len)) != NULL) {
		if (vi->mergeable)
			pvf_net_receive_mergeable(vi, buf, len);
		else
			pvf_net_receive_small(vi, buf, len);
		done++;
	}
	if (vq->num_free > pvf_vq_size(vq) / 2 &&
	    !pvf_net_refill(vi, GFP_ATOMIC))
		pvf_net_schedule_refill(vi, 0);

	/* a full budget means "poll me again": completing is not ours then */
	if (done == budget)
		return budget;
	if (unlikely(pvf_vq_is_broken(vq))) {
		pvf_net_broken(vi);
		napi_complete_done(napi, done);	/* no callbacks from it */
		return done;
	}
	pvf_net_napi_complete(napi, vq, done);
	return done;
}

/* ---- transmit ---------------------------------------------------------- */

static void pvf_net_free_tx(struct pvf_net *vi, int budget)
{
	struct netdev_queue *txq = netdev_get_tx_queue(vi->dev, 0);
	struct pvf_net_stats *st = &vi->sq.stats;
	unsigned int len, packets = 0, bytes = 0;
	struct sk_buff *skb;

	while ((skb = pvf_vq_get_buf(vi->sq.vq, &len)) != NULL) {
		packets++;
		bytes += skb->len;
		napi_consume_skb(skb, budget);
	}
	if (!packets)
		return;
	netdev_tx_completed_queue(txq, packets, bytes);
	u64_stats_update_begin(&st->syncp);
	st->packets += packets;
	st->bytes += bytes;
	u64_stats_update_end(&st->syncp);
}

static int pvf_net_tx_poll(struct napi_struct *napi, int budget)
{
	struct pvf_net *vi = container_of(napi, struct pvf_net, sq.napi);
	struct netdev_queue *txq = netdev_get_tx_queue(vi->dev, 0);
	struct pvf_virtqueue *vq = vi->sq.vq;

	__netif_tx_lock(txq, raw_smp_processor_id());
	pvf_vq_disable_cb(vq);
	if (unlikely(pvf_net_test_stall_tx())) {
		__netif_tx_unlock(txq);
		napi_complete_done(napi, 0);
		return 0;
	}
	pvf_net_free_tx(vi, budget);
	if (netif_tx_queue_stopped(txq) && vq->num_free >= PVF_NET_TX_SG)
		netif_tx_wake_queue(txq);
	if (unlikely(pvf_vq_is_broken(vq))) {
		__netif_tx_unlock(txq);
		pvf_net_broken(vi);
		napi_complete_done(napi, 0);
		return 0;
	}
	/* under the TX lock: start_xmit also switches this queue's callback */
	pvf_net_napi_complete(napi, vq, 0);
	__netif_tx_unlock(txq);
	return 0;
}

/*
 * The segmentation the device is asked to do for a GSO skb: only what
 * pvf_net_setup_features() advertised can reach here (TCP over IPv4/6,
 * with ECN), so anything else is dropped rather than sent whole.
 */
static int pvf_net_gso_hdr(struct sk_buff *skb, struct pvf_net_hdr *hdr)
{
	const struct skb_shared_info *sinfo = skb_shinfo(skb);

	if (sinfo->gso_type & SKB_GSO_TCPV4)
		hdr->gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
	else if (sinfo->gso_type & SKB_GSO_TCPV6)
		hdr->gso_type = VIRTIO_NET_HDR_GSO_TCPV6;
	else
		return -EINVAL;
	if (sinfo->gso_type & SKB_GSO_TCP_ECN)
		hdr->gso_type |= VIRTIO_NET_HDR_GSO_ECN;
	/* a hint only: the device finds the headers itself */
	hdr->hdr_len = cpu_to_le16(skb_headlen(skb));
	hdr->gso_size = cpu_to_le16(sinfo->gso_size);
	return 0;
}

static int pvf_net_xmit_skb(struct pvf_net *vi, struct sk_buff *skb)
{
	struct pvf_net_hdr *hdr = (struct pvf_net_hdr *)skb->cb;
	int n;

	BUILD_BUG_ON(sizeof(*hdr) > sizeof(skb->cb));
	memset(hdr, 0, sizeof(*hdr));
	if (skb->ip_summed == CHECKSUM_PARTIAL) {
		hdr->flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
		hdr->csum_start = cpu_to_le16(skb_checksum_start_offset(skb));
		hdr->csum_offset = cpu_to_le16(skb->csum_offset);
	}
	hdr->gso_type = VIRTIO_NET_HDR_GSO_NONE;
	if (skb_is_gso(skb)) {
		n = pvf_net_gso_hdr(skb, hdr);
		if (n)
			return n;
	}

	sg_init_table(vi->sq.sg, skb_shinfo(skb)->nr_frags + 2);
	sg_set_buf(vi->sq.sg, hdr, sizeof(*hdr));
	n = skb_to_sgvec(skb, vi->sq.sg + 1, 0, skb->len);
	if (n < 0)
		return n;
	return pvf_vq_add_outbuf(vi->sq.vq, vi->sq.sg, n + 1, skb,
				 GFP_ATOMIC);
}

static netdev_tx_t pvf_net_start_xmit(struct sk_buff *skb,
				      struct net_device *dev)
{
	struct pvf_net *vi = netdev_priv(dev);
	struct netdev_queue *txq = netdev_get_tx_queue(dev, 0);
	struct pvf_net_stats *st = &vi->sq.stats;
	struct pvf_virtqueue *vq = vi->sq.vq;
	bool kick;
	int err;

	/* no checksum offload negotiated: the stack never asks for it */
	if (skb->ip_summed == CHECKSUM_PARTIAL &&
	    !pvf_has_feature(vi->vdev, VIRTIO_NET_F_CSUM) &&
	    skb_checksum_help(skb))
		goto drop;

	err = pvf_net_xmit_skb(vi, skb);
	if (unlikely(err)) {
		if (err != -ENOSPC && pvf_vq_is_broken(vq))
			pvf_net_broken(vi);
		goto drop;
	}
	skb_tx_timestamp(skb);
	/* BQL may stop the queue: the device is told then, whatever comes */
	kick = __netdev_tx_sent_queue(txq, skb->len, netdev_xmit_more());

	if (unlikely(pvf_net_test_stall_tx())) {
		netif_tx_stop_queue(txq);
	} else if (vq->num_free < PVF_NET_TX_SG) {
		netif_tx_stop_queue(txq);
		/* completions may have freed room meanwhile */
		if (unlikely(!pvf_vq_enable_cb_delayed(vq)))
			pvf_net_napi_schedule(&vi->sq.napi, vq);
	}
	if (kick || netif_xmit_stopped(txq)) {
		if (pvf_vq_kick_prepare(vq) && pvf_vq_notify(vq))
			pvf_net_stat_add(st, &st->kicks, 1);
	}
	return NETDEV_TX_OK;

drop:
	pvf_net_stat_add(st, &st->drops, 1);
	dev_kfree_skb_any(skb);
	if (!netdev_xmit_more() && pvf_vq_kick_prepare(vq))
		pvf_vq_notify(vq);
	return NETDEV_TX_OK;
}

/* ---- control queue ---------------------------------------------------- */

static void pvf_net_ctrl_done(struct pvf_virtqueue *vq)
{
	struct pvf_net *vi = vq->vdev->priv;

	complete(&vi->ctrl_done);
}

/*
 * One command, its payload in @data (a terminated scatterlist, or NULL),
 * and the wait for the device's ack.  drivers/net/virtio_net.c spins
 * under RTNL until the device answers; here a device that has not
 * answered in ctrl_timeout_ms is taken for broken: it still owns the
 * buffers, so the queue cannot be used again, and RTNL is let go.
 * RTNL held: it serialises the commands and their one buffer.
 */
static int pvf_net_ctrl_cmd(struct pvf_net *vi, u8 class, u8 cmd,
			    struct scatterlist *data)
{
	struct pvf_net_ctrl *ctrl = vi->ctrl;
	struct scatterlist hdr, status, *sgs[3];
	unsigned int out = 0, len;
	unsigned long left;
	int err;

	ASSERT_RTNL();
	if (!vi->cvq || pvf_device_is_broken(vi->vdev))
		return -EIO;
	ctrl->hdr.class = class;
	ctrl->hdr.cmd = cmd;
	ctrl->status = VIRTIO_NET_ERR;
	sg_init_one(&hdr, &ctrl->hdr, sizeof(ctrl->hdr));
	sgs[out++] = &hdr;
	if (data)
		sgs[out++] = data;
	sg_init_one(&status, &ctrl->status, sizeof(ctrl->status));
	sgs[out] = &status;

	reinit_completion(&vi->ctrl_done);
	err = pvf_vq_add_sgs(vi->cvq, sgs, out, 1, ctrl, GFP_KERNEL);
	if (err)
		return err;
	if (!pvf_net_test_mute_ctrl())
		pvf_vq_kick(vi->cvq);

	left = msecs_to_jiffies(ctrl_timeout_ms);
	while (!pvf_vq_get_buf(vi->cvq, &len)) {
		if (pvf_vq_is_broken(vi->cvq))
			return -EIO;
		left = wait_for_completion_timeout(&vi->ctrl_done, left);
		if (!left) {
			netdev_err(vi->dev, "control command %u.%u: no answer in %u ms\n",
				   class, cmd, ctrl_timeout_ms);
			pvf_net_broken(vi);
			return -ETIMEDOUT;
		}
	}
	return ctrl->status == VIRTIO_NET_OK ? 0 : -EINVAL;
}

static int pvf_net_ctrl_flag(struct pvf_net *vi, u8 class, u8 cmd, bool on)
{
	struct scatterlist sg;

	vi->ctrl->data.on = on;
	sg_init_one(&sg, &vi->ctrl->data.on, sizeof(vi->ctrl->data.on));
	return pvf_net_ctrl_cmd(vi, class, cmd, &sg);
}

/* a table of @count addresses from @list, as the device reads it */
static void pvf_net_fill_mac_table(struct pvf_net_mac_table *table,
				   struct netdev_hw_addr_list *list,
				   unsigned int count)
{
	struct netdev_hw_addr *ha;
	unsigned int i = 0;

	table->entries = cpu_to_le32(count);
	netdev_hw_addr_list_for_each(ha, list)
		memcpy(table->macs[i++], ha->addr, ETH_ALEN);
}

/*
 * The unicast and multicast filter tables in one command (virtio 1.2,
 * 5.1.6.5.2), copied under the address lock as the stack keeps them.
 */
static int pvf_net_send_mac_table(struct pvf_net *vi)
{
	struct net_device *dev = vi->dev;
	struct pvf_net_mac_table *uc, *mc;
	unsigned int uc_count, mc_count;
	struct scatterlist sg[2];
	size_t uc_size, mc_size;
	void *buf;
	int err;

	netif_addr_lock_bh(dev);
	uc_count = netdev_uc_count(dev);
	mc_count = netdev_mc_count(dev);
	uc_size = struct_size(uc, macs, uc_count);
	mc_size = struct_size(mc, macs, mc_count);
	buf = kzalloc(uc_size + mc_size, GFP_ATOMIC);
	if (buf) {
		uc = buf;
		mc = buf + uc_size;
		pvf_net_fill_mac_table(uc, &dev->uc, uc_count);
		pvf_net_fill_mac_table(mc, &dev->mc, mc_count);
	}
	netif_addr_unlock_bh(dev);
	if (!buf)
		return -ENOMEM;

	sg_init_table(sg, 2);
	sg_set_buf(&sg[0], uc, uc_size);
	sg_set_buf(&sg[1], mc, mc_size);
	err = pvf_net_ctrl_cmd(vi, VIRTIO_NET_CTRL_MAC,
			       VIRTIO_NET_CTRL_MAC_TABLE_SET, sg);
	kfree(buf);
	return err;
}

/* RTNL held: promiscuous and all-multicast modes, then the tables */
static void pvf_net_send_rx_mode(struct pvf_net *vi)
{
	struct net_device *dev = vi->dev;
	int err;

	err = pvf_net_ctrl_flag(vi, VIRTIO_NET_CTRL_RX,
				VIRTIO_NET_CTRL_RX_PROMISC,
				dev->flags & IFF_PROMISC);
	if (err)
		netdev_warn(dev, "promiscuous mode not set (%d)\n", err);
	err = pvf_net_ctrl_flag(vi, VIRTIO_NET_CTRL_RX,
				VIRTIO_NET_CTRL_RX_ALLMULTI,
				dev->flags & IFF_ALLMULTI);
	if (err)
		netdev_warn(dev, "all-multicast mode not set (%d)\n", err);
	err = pvf_net_send_mac_table(vi);
	if (err)
		netdev_warn(dev, "MAC filter table not set (%d)\n", err);
}

/*
 * ndo_set_rx_mode runs under the address lock, where a command cannot
 * wait: the work sends it (in-tree virtnet_rx_mode_work does the same).
 * The work checks @removing under RTNL like the reset work does.
 */
static void pvf_net_rx_mode_work(struct work_struct *work)
{
	struct pvf_net *vi = container_of(work, struct pvf_net, rx_mode_work);

	rtnl_lock();
	if (!vi->removing && vi->cvq)
		pvf_net_send_rx_mode(vi);
	rtnl_unlock();
}

static int pvf_net_send_mac_addr(struct pvf_net *vi, const u8 *mac)
{
	struct scatterlist sg;

	/* @mac may be on the caller's stack: the device reads a copy */
	memcpy(vi->ctrl->data.mac, mac, ETH_ALEN);
	sg_init_one(&sg, vi->ctrl->data.mac, ETH_ALEN);
	return pvf_net_ctrl_cmd(vi, VIRTIO_NET_CTRL_MAC,
				VIRTIO_NET_CTRL_MAC_ADDR_SET, &sg);
}

static int pvf_net_send_vlan(struct pvf_net *vi, u8 cmd, u16 vid)
{
	struct scatterlist sg;

	vi->ctrl->data.vid = cpu_to_le16(vid);
	sg_init_one(&sg, &vi->ctrl->data.vid, sizeof(vi->ctrl->data.vid));
	return pvf_net_ctrl_cmd(vi, VIRTIO_NET_CTRL_VLAN, cmd, &sg);
}

static int pvf_net_send_guest_offloads(struct pvf_net *vi, u64 offloads)
{
	struct scatterlist sg;

	vi->ctrl->data.offloads = cpu_to_le64(offloads);
	sg_init_one(&sg, &vi->ctrl->data.offloads,
		    sizeof(vi->ctrl->data.offloads));
	return pvf_net_ctrl_cmd(vi, VIRTIO_NET_CTRL_GUEST_OFFLOADS,
				VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET, &sg);
}

/*
 * A reset forgets everything the control queue told the device (QEMU's
 * virtio_net_reset() goes back to promiscuous mode, the configured MAC,
 * no VLAN and every offload): after a restart or resume it is told again.
 * RTNL held.
 */
static void pvf_net_ctrl_replay(struct pvf_net *vi)
{
	struct pvf_device *vdev = vi->vdev;
	u16 vid;

	if (!vi->cvq)
		return;
	if (pvf_has_feature(vdev, VIRTIO_NET_F_CTRL_MAC_ADDR) &&
	    pvf_net_send_mac_addr(vi, vi->dev->dev_addr))
		netdev_warn(vi->dev, "MAC address not restored\n");
	if (pvf_has_feature(vdev, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS) &&
	    vi->guest_offloads != vi->guest_offloads_capable &&
	    pvf_net_send_guest_offloads(vi, vi->guest_offloads))
		netdev_warn(vi->dev, "receive offloads not restored\n");
	for_each_set_bit(vid, vi->active_vlans, VLAN_N_VID)
		if (pvf_net_send_vlan(vi, VIRTIO_NET_CTRL_VLAN_ADD, vid))
			netdev_warn(vi->dev, "VLAN %u not restored\n", vid);
	if (pvf_has_feature(vdev, VIRTIO_NET_F_CTRL_RX) && vi->up)
		pvf_net_send_rx_mode(vi);
}

/* ---- queues and recovery ----------------------------------------------- */

static int pvf_net_find_vqs(struct pvf_net *vi)
{
	struct pvf_virtqueue *vqs[3];
	struct pvf_vq_info info[3] = {
		{ .name = vi->rq.name, .callback = pvf_net_vq_done },
		{ .name = vi->sq.name, .callback = pvf_net_vq_done },
		{ .name = "control", .callback = pvf_net_ctrl_done },
	};
	bool ctrl = pvf_has_feature(vi->vdev, VIRTIO_NET_F_CTRL_VQ);
	int err;

	err = pvf_find_vqs(vi->vdev, ctrl ? 3 : 2, vqs, info);
	if (err)
		return err;
	vi->rq.vq = vqs[PVF_NET_RX];
	vi->sq.vq = vqs[PVF_NET_TX];
	vi->cvq = ctrl ? vqs[PVF_NET_CTRL] : NULL;
	return 0;
}

/* device reset: hand back every buffer, then drop the queues */
static void pvf_net_del_vqs(struct pvf_net *vi)
{
	struct sk_buff *skb;
	void *buf;

	pvf_reset_device(vi->vdev);
	while ((buf = pvf_vq_detach_unused_buf(vi->rq.vq)) != NULL)
		pvf_net_free_rx_buf(vi, buf);
	while ((skb = pvf_vq_detach_unused_buf(vi->sq.vq)) != NULL)
		dev_kfree_skb(skb);
	/* what BQL counted as in flight is gone with them */
	netdev_tx_reset_queue(netdev_get_tx_queue(vi->dev, 0));
	/* a command that timed out left vi->ctrl there, ours to keep */
	while (vi->cvq && pvf_vq_detach_unused_buf(vi->cvq))
		;
	pvf_del_vqs(vi->vdev);
	vi->rq.vq = NULL;
	vi->sq.vq = NULL;
	vi->cvq = NULL;
}

static void pvf_net_update_link(struct pvf_net *vi)
{
	bool up = true;

	if (pvf_has_feature(vi->vdev, VIRTIO_NET_F_STATUS))
		up = pvf_cread_member(vi->vdev, struct virtio_net_config,
				      status) & VIRTIO_NET_S_LINK_UP;
	if (pvf_device_is_broken(vi->vdev))
		up = false;
	if (up == netif_carrier_ok(vi->dev))
		return;
	if (up)
		netif_carrier_on(vi->dev);
	else
		netif_carrier_off(vi->dev);
	netdev_info(vi->dev, "link %s\n", up ? "up" : "down");
}

/* RTNL held: NAPI on and off only here, so close() knows what to undo */
static void pvf_net_napi_on(struct pvf_net *vi)
{
	napi_enable(&vi->rq.napi);
	napi_enable(&vi->sq.napi);
	vi->napi_on = true;
	/* the ring may have had nothing to complete: poll once */
	local_bh_disable();
	pvf_net_napi_schedule(&vi->rq.napi, vi->rq.vq);
	local_bh_enable();
}

static void pvf_net_napi_off(struct pvf_net *vi)
{
	if (!vi->napi_on)
		return;
	napi_disable(&vi->rq.napi);
	napi_disable(&vi->sq.napi);
	vi->napi_on = false;
}

/*
 * Stop everything that touches the queues.  Detaching under the TX lock
 * (as drivers/net/virtio_net.c virtnet_freeze_down() does) waits for an
 * ndo_start_xmit() running on another CPU and keeps new ones and the
 * watchdog out until netif_device_attach().
 */
static void pvf_net_quiesce(struct pvf_net *vi)
{
	netif_tx_lock_bh(vi->dev);
	netif_device_detach(vi->dev);
	netif_tx_unlock_bh(vi->dev);
	if (vi->up) {
		pvf_net_set_refill(vi, false);
		pvf_net_napi_off(vi);
	}
}

/* new queues on the restarted device, then traffic again */
static int pvf_net_restart(struct pvf_net *vi)
{
	int err;

	if (pvf_net_test_fail_restart())
		return -EIO;
	err = pvf_device_restart(vi->vdev);
	if (err)
		return err;
	err = pvf_net_find_vqs(vi);
	if (err)
		return err;
	pvf_device_ready(vi->vdev);
	pvf_net_ctrl_replay(vi);
	if (vi->up) {
		pvf_net_refill(vi, GFP_KERNEL);
		pvf_net_set_refill(vi, true);
		pvf_net_napi_on(vi);
	}
	netif_device_attach(vi->dev);
	pvf_net_update_link(vi);
	return 0;
}

/*
 * Transmit timeout: reset the device and start again.  If the restart
 * fails the device stays detached, broken and without queues, NAPI off
 * (vi->napi_on says so): close() then has nothing to disable, and open()
 * refuses.
 */
static void pvf_net_reset_work(struct work_struct *work)
{
	struct pvf_net *vi = container_of(work, struct pvf_net, reset_work);
	struct net_device *dev = vi->dev;
	int err;

	pvf_net_test_delay_reset();
	rtnl_lock();
	/* see pvf_net_remove() for why the flag is enough */
	if (vi->removing || !vi->rq.vq)
		goto out;
	netdev_warn(dev, "resetting device after transmit timeout\n");
	pvf_net_test_unstall_tx();
	pvf_net_quiesce(vi);
	pvf_net_del_vqs(vi);

	err = pvf_net_restart(vi);
	if (err) {
		netdev_err(dev, "reset failed (%d), device unusable\n", err);
		pvf_break_device(vi->vdev);
		netif_carrier_off(dev);
	}
out:
	rtnl_unlock();
}

/* ---- net_device_ops ---------------------------------------------------- */

static int pvf_net_open(struct net_device *dev)
{
	struct pvf_net *vi = netdev_priv(dev);

	if (!vi->rq.vq || pvf_device_is_broken(vi->vdev))
		return -EIO;
	pvf_net_set_refill(vi, true);
	if (!pvf_net_refill(vi, GFP_KERNEL))
		pvf_net_schedule_refill(vi, 0);
	vi->up = true;
	dev->watchdog_timeo = msecs_to_jiffies(tx_timeout_ms);
	pvf_net_napi_on(vi);
	netif_tx_start_all_queues(dev);
	return 0;
}

static int pvf_net_close(struct net_device *dev)
{
	struct pvf_net *vi = netdev_priv(dev);

	netif_tx_disable(dev);
	vi->up = false;
	pvf_net_set_refill(vi, false);
	pvf_net_napi_off(vi);
	/* reclaim what the device already sent */
	if (vi->sq.vq) {
		netif_tx_lock_bh(dev);
		pvf_net_free_tx(vi, 0);
		netif_tx_unlock_bh(dev);
	}
	return 0;
}

static void pvf_net_tx_timeout(struct net_device *dev, unsigned int txqueue)
{
	struct pvf_net *vi = netdev_priv(dev);
	struct pvf_net_stats *st = &vi->sq.stats;

	pvf_net_stat_add(st, &st->timeouts, 1);
	netdev_err(dev, "transmit queue %u timed out, %u descriptors free\n",
		   txqueue, vi->sq.vq ? vi->sq.vq->num_free : 0);
	schedule_work(&vi->reset_work);
}

static void pvf_net_fetch(const struct pvf_net_stats *st, u64 *packets,
			  u64 *bytes, u64 *drops, u64 *errors)
{
	unsigned int start;

	do {
		start = u64_stats_fetch_begin(&st->syncp);
		*packets = st->packets;
		*bytes = st->bytes;
		*drops = st->drops;
		*errors = st->errors;
	} while (u64_stats_fetch_retry(&st->syncp, start));
}

static void pvf_net_get_stats64(struct net_device *dev,
				struct rtnl_link_stats64 *s)
{
	struct pvf_net *vi = netdev_priv(dev);

	pvf_net_fetch(&vi->rq.stats, &s->rx_packets, &s->rx_bytes,
		      &s->rx_dropped, &s->rx_errors);
	pvf_net_fetch(&vi->sq.stats, &s->tx_packets, &s->tx_bytes,
		      &s->tx_dropped, &s->tx_errors);
}

static void pvf_net_set_rx_mode(struct net_device *dev)
{
	struct pvf_net *vi = netdev_priv(dev);

	if (pvf_has_feature(vi->vdev, VIRTIO_NET_F_CTRL_RX))
		schedule_work(&vi->rx_mode_work);
}

/*
 * Without CTRL_MAC_ADDR a VIRTIO 1.x device has no way to learn the new
 * address (its config MAC is read-only), as in in-tree
 * virtnet_set_mac_address(); QEMU then still accepts it while in the
 * promiscuous mode it starts in without CTRL_RX.
 */
static int pvf_net_set_mac_address(struct net_device *dev, void *p)
{
	struct pvf_net *vi = netdev_priv(dev);
	struct sockaddr *addr = p;
	int err;

	err = eth_prepare_mac_addr_change(dev, p);
	if (err)
		return err;
	if (pvf_has_feature(vi->vdev, VIRTIO_NET_F_CTRL_MAC_ADDR)) {
		err = pvf_net_send_mac_addr(vi, addr->sa_data);
		if (err) {
			netdev_warn(dev, "device refused MAC %pM (%d)\n",
				    addr->sa_data, err);
			return err;
		}
	}
	eth_commit_mac_addr_change(dev, p);
	return 0;
}

static int pvf_net_vlan_rx_add_vid(struct net_device *dev, __be16 proto,
				   u16 vid)
{
	struct pvf_net *vi = netdev_priv(dev);
	int err;

	err = pvf_net_send_vlan(vi, VIRTIO_NET_CTRL_VLAN_ADD, vid);
	if (err) {
		netdev_warn(dev, "VLAN %u not added to the filter (%d)\n",
			    vid, err);
		return err;
	}
	set_bit(vid, vi->active_vlans);
	return 0;
}

/* the stack cannot undo a removal: a refusal is only reported */
static int pvf_net_vlan_rx_kill_vid(struct net_device *dev, __be16 proto,
				    u16 vid)
{
	struct pvf_net *vi = netdev_priv(dev);
	int err;

	clear_bit(vid, vi->active_vlans);
	err = pvf_net_send_vlan(vi, VIRTIO_NET_CTRL_VLAN_DEL, vid);
	if (err)
		netdev_warn(dev, "VLAN %u not removed from the filter (%d)\n",
			    vid, err);
	return 0;
}

/* the device's GSO packets come checksummed (virtio 1.2, 5.1.3.1) */
static netdev_features_t pvf_net_fix_features(struct net_device *dev,
					      netdev_features_t features)
{
	if (!(features & NETIF_F_RXCSUM))
		features &= ~NETIF_F_GRO_HW;
	return features;
}

static u64 pvf_net_guest_offloads_for(const struct pvf_net *vi,
				      netdev_features_t features)
{
	u64 offloads = vi->guest_offloads_capable;

	if (!(features & NETIF_F_GRO_HW))
		offloads &= ~PVF_NET_GUEST_GSO;
	if (!(features & NETIF_F_RXCSUM))
		offloads &= ~PVF_NET_GUEST_OFFLOADS;
	return offloads;
}

/* ethtool -K rx-gro-hw / rx: the device is told (CTRL_GUEST_OFFLOADS) */
static int pvf_net_set_features(struct net_device *dev,
				netdev_features_t features)
{
	struct pvf_net *vi = netdev_priv(dev);
	u64 offloads;
	int err;

	if (!pvf_has_feature(vi->vdev, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS))
		return 0;
	offloads = pvf_net_guest_offloads_for(vi, features);
	if (offloads == vi->guest_offloads)
		return 0;
	err = pvf_net_send_guest_offloads(vi, offloads);
	if (err) {
		netdev_warn(dev, "device refused receive offloads %#llx (%d)\n",
			    offloads, err);
		return err;
	}
	vi->guest_offloads = offloads;
	return 0;
}

static const struct net_device_ops pvf_net_ops = {
	.ndo_open		= pvf_net_open,
	.ndo_stop		= pvf_net_close,
	.ndo_start_xmit		= pvf_net_start_xmit,
	.ndo_tx_timeout		= pvf_net_tx_timeout,
	.ndo_get_stats64	= pvf_net_get_stats64,
	.ndo_validate_addr	= eth_validate_addr,
	.ndo_set_mac_address	= pvf_net_set_mac_address,
	.ndo_set_rx_mode	= pvf_net_set_rx_mode,
	.ndo_vlan_rx_add_vid	= pvf_net_vlan_rx_add_vid,
	.ndo_vlan_rx_kill_vid	= pvf_net_vlan_rx_kill_vid,
	.ndo_fix_features	= pvf_net_fix_features,
	.ndo_set_features	= pvf_net_set_features,
};

/* ---- ethtool ----------------------------------------------------------- */

static void pvf_net_get_drvinfo(struct net_device *dev,
				struct ethtool_drvinfo *info)
{
	struct pvf_net *vi = netdev_priv(dev);

	strscpy(info->driver, KBUILD_MODNAME, sizeof(info->driver));
	strscpy(info->version, "0.1", sizeof(info->version));
	strscpy(info->bus_info, dev_name(vi->vdev->dev.parent),
		sizeof(info->bus_info));
}

static int pvf_net_get_sset_count(struct net_device *dev, int sset)
{
	return sset == ETH_SS_STATS ? PVF_NET_NSTATS : -EOPNOTSUPP;
}

static void pvf_net_get_strings(struct net_device *dev, u32 sset, u8 *data)
{
	if (sset == ETH_SS_STATS)
		memcpy(data, pvf_net_stat_names, sizeof(pvf_net_stat_names));
}

static void pvf_net_get_ethtool_stats(struct net_device *dev,
				      struct ethtool_stats *stats, u64 *data)
{
	struct pvf_net *vi = netdev_priv(dev);
	const struct pvf_net_stats *q[] = { &vi->rq.stats, &vi->sq.stats };
	unsigned int i, start;

	for (i = 0; i < ARRAY_SIZE(q); i++, data += 5) {
		do {
			start = u64_stats_fetch_begin(&q[i]->syncp);
			data[0] = q[i]->packets;
			data[1] = q[i]->bytes;
			data[2] = q[i]->drops;
			data[3] = q[i]->errors;
			data[4] = q[i]->kicks;
		} while (u64_stats_fetch_retry(&q[i]->syncp, start));
	}
	data[0] = vi->sq.stats.timeouts;
}

static const struct ethtool_ops pvf_net_ethtool_ops = {
	.get_drvinfo		= pvf_net_get_drvinfo,
	.get_link		= ethtool_op_get_link,
	.get_sset_count		= pvf_net_get_sset_count,
	.get_strings		= pvf_net_get_strings,
	.get_ethtool_stats	= pvf_net_get_ethtool_stats,
};

/* ---- sysfs ------------------------------------------------------------- */

#ifdef CONFIG_SYSFS
/* as in-tree: queues/rx-0/pvf_net/mergeable_rx_buffer_size */
static ssize_t pvf_net_mrg_size_show(struct netdev_rx_queue *queue, char *buf)
{
	struct pvf_net *vi = netdev_priv(queue->dev);

	return sysfs_emit(buf, "%u\n", pvf_net_mrg_len(vi));
}

static struct rx_queue_attribute pvf_net_mrg_size_attr =
	__ATTR(mergeable_rx_buffer_size, 0444, pvf_net_mrg_size_show, NULL);

static struct attribute *pvf_net_mrg_attrs[] = {
	&pvf_net_mrg_size_attr.attr,
	NULL
};

static const struct attribute_group pvf_net_mrg_group = {
	.name = "pvf_net",
	.attrs = pvf_net_mrg_attrs,
};
#endif

/* ---- probe / remove ---------------------------------------------------- */

static void pvf_net_setup_features(struct pvf_net *vi)
{
	struct pvf_device *vdev = vi->vdev;
	struct net_device *dev = vi->dev;
	u8 mac[ETH_ALEN];
	u16 mtu = ETH_DATA_LEN;

	/*
	 * The device segments only what it may also checksum (virtio 1.2,
	 * 5.1.3.1): TSO rides on CSUM, as in drivers/net/virtio_net.c.
	 */
	if (pvf_has_feature(vdev, VIRTIO_NET_F_CSUM)) {
		dev->hw_features |= NETIF_F_HW_CSUM | NETIF_F_SG;
		if (pvf_has_feature(vdev, VIRTIO_NET_F_HOST_TSO4))
			dev->hw_features |= NETIF_F_TSO;
		if (pvf_has_feature(vdev, VIRTIO_NET_F_HOST_TSO6))
			dev->hw_features |= NETIF_F_TSO6;
		/* ECN is a flag on the segments of a TSO: nothing without one */
		if (dev->hw_features & (NETIF_F_TSO | NETIF_F_TSO6) &&
		    pvf_has_feature(vdev, VIRTIO_NET_F_HOST_ECN))
			dev->hw_features |= NETIF_F_TSO_ECN;
		dev->features |= dev->hw_features;
	}
	if (pvf_has_feature(vdev, VIRTIO_NET_F_GUEST_CSUM)) {
		dev->hw_features |= NETIF_F_RXCSUM;
		dev->features |= NETIF_F_RXCSUM;
	}
	vi->guest_offloads = vdev->features & PVF_NET_GUEST_OFFLOADS;
	if (pvf_has_feature(vdev, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS)) {
		vi->guest_offloads_capable = vi->guest_offloads;
		if (vi->guest_offloads & PVF_NET_GUEST_GSO) {
			dev->hw_features |= NETIF_F_GRO_HW;
			dev->features |= NETIF_F_GRO_HW;
		}
	}
	if (pvf_has_feature(vdev, VIRTIO_NET_F_CTRL_VLAN))
		dev->features |= NETIF_F_HW_VLAN_CTAG_FILTER;
	/* the MAC table takes secondary addresses (macvlan) without promisc */
	if (pvf_has_feature(vdev, VIRTIO_NET_F_CTRL_RX))
		dev->priv_flags |= IFF_UNICAST_FLT;
	dev->priv_flags |= IFF_LIVE_ADDR_CHANGE;

	if (pvf_has_feature(vdev, VIRTIO_NET_F_MAC)) {
		pvf_cread_bytes(vdev, offsetof(struct virtio_net_config, mac),
				mac, ETH_ALEN);
		eth_hw_addr_set(dev, mac);
	} else {
		eth_hw_addr_random(dev);
		netdev_info(dev, "no MAC from the device, using random %pM\n",
			    dev->dev_addr);
	}

	vi->mergeable = pvf_has_feature(vdev, VIRTIO_NET_F_MRG_RXBUF);
#ifdef CONFIG_SYSFS
	if (vi->mergeable)
		dev->sysfs_rx_queue_group = &pvf_net_mrg_group;
#endif
	/*
	 * The device's MTU is a maximum (virtio 1.2, 5.1.4.1); without one,
	 * mergeable buffers chain up to a 64 KiB frame, as in in-tree
	 * virtnet_probe(), while single buffers are sized for the MTU once.
	 */
	if (pvf_has_feature(vdev, VIRTIO_NET_F_MTU)) {
		mtu = pvf_cread_member(vdev, struct virtio_net_config, mtu);
		dev->max_mtu = mtu;
	} else {
		dev->max_mtu = vi->mergeable ? ETH_MAX_MTU : mtu;
	}
	dev->min_mtu = ETH_MIN_MTU;
	dev->mtu = mtu;
	vi->rx_buf_len = sizeof(struct pvf_net_hdr) + VLAN_ETH_HLEN + mtu;
	vi->guest_gso = pvf_has_feature(vdev, VIRTIO_NET_F_GUEST_TSO4) ||
			pvf_has_feature(vdev, VIRTIO_NET_F_GUEST_TSO6);
}

/*
 * An MTU below the Ethernet minimum is not one to promise the device we
 * honour: VIRTIO_NET_F_MTU is not negotiated then (in-tree virtnet_validate).
 */
static int pvf_net_validate(struct pvf_device *vdev)
{
	const u64 need_ctrl_vq = BIT_ULL(VIRTIO_NET_F_CTRL_RX) |
				 BIT_ULL(VIRTIO_NET_F_CTRL_VLAN) |
				 BIT_ULL(VIRTIO_NET_F_GUEST_ANNOUNCE) |
				 BIT_ULL(VIRTIO_NET_F_CTRL_MAC_ADDR) |
				 BIT_ULL(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS);
	u16 mtu;

	/* a device offering them without the queue breaks virtio 1.2, 5.1.3.1 */
	if (!pvf_has_feature(vdev, VIRTIO_NET_F_CTRL_VQ))
		vdev->features &= ~need_ctrl_vq;

	/*
	 * 64 KiB packets from the device need buffers that chain (there is
	 * no big-packet mode here) and come checksummed only with GUEST_CSUM
	 * (virtio 1.2, 5.1.3.1).
	 */
	if (!pvf_has_feature(vdev, VIRTIO_NET_F_MRG_RXBUF) ||
	    !pvf_has_feature(vdev, VIRTIO_NET_F_GUEST_CSUM))
		vdev->features &= ~PVF_NET_GUEST_GSO;

	if (!pvf_has_feature(vdev, VIRTIO_NET_F_MTU))
		return 0;
	mtu = pvf_cread_member(vdev, struct virtio_net_config, mtu);
	if (mtu < ETH_MIN_MTU) {
		dev_warn(&vdev->dev,
			 "device MTU %u below %u, VIRTIO_NET_F_MTU not negotiated\n",
			 mtu, ETH_MIN_MTU);
		vdev->features &= ~BIT_ULL(VIRTIO_NET_F_MTU);
	}
	return 0;
}

static int pvf_net_probe(struct pvf_device *vdev)
{
	struct net_device *dev;
	struct pvf_net *vi;
	int err;

	dev = alloc_etherdev(sizeof(*vi));
	if (!dev)
		return -ENOMEM;
	vi = netdev_priv(dev);
	vi->vdev = vdev;
	vi->dev = dev;
	vi->ctrl = kzalloc(sizeof(*vi->ctrl), GFP_KERNEL);
	if (!vi->ctrl) {
		err = -ENOMEM;
		goto err_netdev;
	}
	init_completion(&vi->ctrl_done);
	INIT_WORK(&vi->rx_mode_work, pvf_net_rx_mode_work);
	vdev->priv = vi;
	SET_NETDEV_DEV(dev, &vdev->dev);
	strscpy(dev->name, ifname, sizeof(dev->name));
	dev->netdev_ops = &pvf_net_ops;
	dev->ethtool_ops = &pvf_net_ethtool_ops;
	dev->watchdog_timeo = msecs_to_jiffies(tx_timeout_ms);
	u64_stats_init(&vi->rq.stats.syncp);
	u64_stats_init(&vi->sq.stats.syncp);
	ewma_pvf_pkt_len_init(&vi->rq.avg_len);
	strscpy(vi->rq.name, "input.0", sizeof(vi->rq.name));
	strscpy(vi->sq.name, "output.0", sizeof(vi->sq.name));
	INIT_DELAYED_WORK(&vi->refill_work, pvf_net_refill_work);
	spin_lock_init(&vi->refill_lock);
	INIT_WORK(&vi->reset_work, pvf_net_reset_work);
	pvf_compat_napi_add(dev, &vi->rq.napi, pvf_net_rx_poll);
	pvf_compat_napi_add(dev, &vi->sq.napi, pvf_net_tx_poll);

	pvf_net_setup_features(vi);

	err = pvf_net_find_vqs(vi);
	if (err)
		goto err_free;

	pvf_device_ready(vdev);
	/* a random address is the device's only once it is told */
	if (!pvf_has_feature(vdev, VIRTIO_NET_F_MAC) &&
	    pvf_has_feature(vdev, VIRTIO_NET_F_CTRL_MAC_ADDR)) {
		rtnl_lock();
		err = pvf_net_send_mac_addr(vi, dev->dev_addr);
		rtnl_unlock();
		if (err)
			netdev_warn(dev, "device refused MAC %pM (%d)\n",
				    dev->dev_addr, err);
	}
	netif_carrier_off(dev);
	err = register_netdev(dev);
	if (err)
		goto err_vqs;
	pvf_net_update_link(vi);

	netdev_info(dev, "%pM, MTU %u%s%s%s%s%s%s%s\n", dev->dev_addr, dev->mtu,
		    pvf_has_feature(vdev, VIRTIO_NET_F_CSUM) ? ", tx csum" : "",
		    dev->hw_features & (NETIF_F_TSO | NETIF_F_TSO6) ?
			", tso" : "",
		    pvf_has_feature(vdev, VIRTIO_NET_F_GUEST_CSUM) ?
			", rx csum" : "",
		    vi->mergeable ? ", mergeable rx" : "",
		    vi->guest_gso ? ", rx gso" : "",
		    pvf_has_feature(vdev, VIRTIO_NET_F_STATUS) ?
			", link status" : "",
		    vi->cvq ? ", control queue" : "");
	return 0;

err_vqs:
	pvf_net_del_vqs(vi);
err_free:
	pvf_net_free_frag(vi);
	netif_napi_del(&vi->rq.napi);
	netif_napi_del(&vi->sq.napi);
	vdev->priv = NULL;
	kfree(vi->ctrl);
err_netdev:
	free_netdev(dev);
	return err;
}

static void pvf_net_remove(struct pvf_device *vdev)
{
	struct pvf_net *vi = vdev->priv;

	/*
	 * The reset work does everything under RTNL and checks @removing
	 * first: a run that took RTNL before us has finished when we get it,
	 * one that gets it after us does nothing.  The watchdog can queue the
	 * work until unregister_netdev() has closed the device, so it is
	 * cancelled only after; cancel_work_sync() then waits for a queued or
	 * running instance (which returns at once), and nothing runs once we
	 * free the queues and the netdev below.
	 */
	rtnl_lock();
	vi->removing = true;
	rtnl_unlock();
	unregister_netdev(vi->dev);	/* runs ndo_stop */
	cancel_work_sync(&vi->reset_work);
	cancel_work_sync(&vi->rx_mode_work);
	pvf_net_set_refill(vi, false);
	if (vi->rq.vq)
		pvf_net_del_vqs(vi);
	else
		pvf_reset_device(vdev);
	pvf_net_free_frag(vi);
	netif_napi_del(&vi->rq.napi);
	netif_napi_del(&vi->sq.napi);
	vdev->priv = NULL;
	kfree(vi->ctrl);
	free_netdev(vi->dev);
}

/* a link announcement asked for (after a migration), to be acked */
static bool pvf_net_announce_pending(struct pvf_net *vi)
{
	if (!pvf_has_feature(vi->vdev, VIRTIO_NET_F_GUEST_ANNOUNCE))
		return false;
	return pvf_cread_member(vi->vdev, struct virtio_net_config, status) &
	       VIRTIO_NET_S_ANNOUNCE;
}

/*
 * Under RTNL, like every other change of the device's state: the reset
 * work holds it while the device is reset and has no queues, and the link
 * is read again once it has restarted.  An announcement is made the way
 * in-tree virtnet_config_changed_work() makes it: the stack tells the
 * peers (gratuitous ARP, unsolicited neighbour advertisements; it takes
 * RTNL itself), then the device hears it was done.
 */
static void pvf_net_config_changed(struct pvf_device *vdev)
{
	struct pvf_net *vi = vdev->priv;
	bool announce = false;

	rtnl_lock();
	if (vi->rq.vq) {
		pvf_net_update_link(vi);
		announce = pvf_net_announce_pending(vi);
	}
	rtnl_unlock();
	if (!announce)
		return;
	if (netif_carrier_ok(vi->dev))
		netdev_notify_peers(vi->dev);
	rtnl_lock();
	if (pvf_net_ctrl_cmd(vi, VIRTIO_NET_CTRL_ANNOUNCE,
			     VIRTIO_NET_CTRL_ANNOUNCE_ACK, NULL))
		netdev_warn(vi->dev, "link announcement not acknowledged\n");
	rtnl_unlock();
}

#ifdef CONFIG_PM_SLEEP
/*
 * Suspend or hibernation, as drivers/net/virtio_net.c virtnet_freeze()
 * does it: TX detached under the TX lock, refill and NAPI off, the device
 * reset and every buffer handed back.  The interface keeps its state (up
 * or down, address, routes); under RTNL, so the reset work, which checks
 * for queues first, finds none and leaves the device alone.
 */
static int pvf_net_freeze(struct pvf_device *vdev)
{
	struct pvf_net *vi = vdev->priv;

	rtnl_lock();
	pvf_net_quiesce(vi);
	if (vi->rq.vq)
		pvf_net_del_vqs(vi);
	else
		pvf_reset_device(vdev);
	rtnl_unlock();
	return 0;
}

/*
 * After resume (virtnet_restore()): the bus renegotiated the features of
 * probe; new queues, and an interface that was up receives and sends again.
 */
static int pvf_net_restore(struct pvf_device *vdev)
{
	struct pvf_net *vi = vdev->priv;
	int err;

	rtnl_lock();
	err = pvf_net_find_vqs(vi);
	if (err) {
		netdev_err(vi->dev, "no queues after resume (%d)\n", err);
		goto out;
	}
	pvf_device_ready(vdev);
	pvf_net_ctrl_replay(vi);
	if (vi->up) {
		pvf_net_set_refill(vi, true);
		if (!pvf_net_refill(vi, GFP_KERNEL))
			pvf_net_schedule_refill(vi, 0);
		pvf_net_napi_on(vi);
	}
	netif_tx_lock_bh(vi->dev);
	netif_device_attach(vi->dev);
	netif_tx_unlock_bh(vi->dev);
	pvf_net_update_link(vi);
out:
	rtnl_unlock();
	return err;
}
#endif /* CONFIG_PM_SLEEP */

static struct pvf_driver pvf_net_driver = {
	.driver.name		= "pvf_net",
	.id_table		= pvf_net_id_table,
	.feature_table		= pvf_net_features,
	.feature_table_size	= ARRAY_SIZE(pvf_net_features),
	.validate		= pvf_net_validate,
	.probe			= pvf_net_probe,
	.remove			= pvf_net_remove,
	.config_changed		= pvf_net_config_changed,
#ifdef CONFIG_PM_SLEEP
	.freeze			= pvf_net_freeze,
	.restore		= pvf_net_restore,
#endif
};

module_pvf_driver(pvf_net_driver);

MODULE_ALIAS("pvf_virtio:d00000001v*");
