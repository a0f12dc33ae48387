// SPDX-License-Identifier: GPL-2.0
/*
 * volte media relay: the XDP fast path.
 *
 * For an IPv4 or IPv6 UDP packet whose (destination address, destination port) is a key of the
 * `flows` hash map (or whose port is, with the wildcard address 0.0.0.0 / :: in the key: a relay
 * bound to the wildcard), and, with FLOW_F_MATCH_SOURCE, whose source is the sender the relay
 * latched onto, the packet is relayed without going up the stack:
 *
 *   source      -> the relay's outgoing local address:port (value.src_addr/src_port)
 *   destination -> the latched peer                      (value.dst_addr/dst_port)
 *   TTL / hop limit -> 64, as a packet sent by the userspace relay's socket would have
 *   Ethernet    -> dst = next-hop MAC, src = egress interface MAC (both in the value)
 *   checksums   -> IPv4 header checksum and the UDP checksum are updated incrementally
 *                  (RFC 1624) over the changed words, so the receiver still verifies the
 *                  payload end to end; an IPv4 UDP checksum of 0 ("none computed", RFC 768)
 *                  stays 0; a result of 0 is sent as 0xffff. With FLOW_F_ZERO_UDP_CSUM in
 *                  value.flags an IPv4 flow's UDP checksum is set to 0 instead: for senders
 *                  whose packets reach us with a partial (offloaded, CHECKSUM_PARTIAL)
 *                  checksum, as packets from a socket on the same host over a veth do: XDP
 *                  cannot finish those, so an incremental update would leave them wrong.
 *   counters    -> value.packets += 1, value.bytes += UDP payload length (atomic adds, so the
 *                  counts are exact with the flow served from several CPUs)
 *
 * and then sent with XDP_TX when the egress interface is the one it arrived on, or with
 * bpf_redirect() to value.ifindex otherwise. Everything else goes up the stack with XDP_PASS to
 * the userspace relay: unknown destinations, senders other than the latched one (so that the
 * relay can re-latch), IPv4 with options or fragmented, IPv6 with extension headers,
 * VLAN-tagged frames, and truncated or inconsistent headers.
 *
 * The map layout is shared with services/media/xdp/maps.py, which passes the sizes it packs as
 * VOLTE_KEY_SIZE / VOLTE_VALUE_SIZE; the static asserts below fail the build if the two drift.
 *
 * Self-contained on purpose: only the kernel UAPI headers (linux-libc-dev, which clang pulls in
 * through libc6-dev) are needed, not libbpf-dev; the few libbpf macros used are defined here.
 * No global data and only inlined functions, so the object has one program section whose only
 * relocations are the map references that the Python loader patches.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/types.h>
#include <linux/udp.h>

/* --- the part of libbpf's bpf_helpers.h that this program needs ------------------------------ */
#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#undef __always_inline
#define __always_inline inline __attribute__((always_inline))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_redirect)(__u32 ifindex, __u64 flags) = (void *)BPF_FUNC_redirect;
static __s64 (*bpf_csum_diff)(void *from, __u32 from_size, void *to, __u32 to_size,
			      __u32 seed) = (void *)BPF_FUNC_csum_diff;

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define be16(x) ((__be16)__builtin_bswap16(x))
#define from_be16(x) ((__u16)__builtin_bswap16(x))
#else
#define be16(x) ((__be16)(x))
#define from_be16(x) ((__u16)(x))
#endif

#ifndef VOLTE_KEY_SIZE
#define VOLTE_KEY_SIZE 20
#endif
#ifndef VOLTE_VALUE_SIZE
#define VOLTE_VALUE_SIZE 96
#endif
#ifndef VOLTE_MAX_FLOWS
#define VOLTE_MAX_FLOWS 65536
#endif

#define RELAY_TTL 64
#define FLOW_F_ZERO_UDP_CSUM 1 /* IPv4 only: send the UDP checksum as 0 (none) */
#define FLOW_F_MATCH_SOURCE 2  /* only packets from from_addr:from_port; others go up */
#define IPV4_MF 0x2000
#define IPV4_OFFSET 0x1fff

/* --- the map ------------------------------------------------------------------------------------ */
struct flow_key {
	__u8 addr[16]; /* local address the packet arrives at; IPv4 in the first 4 bytes, rest 0 */
	__be16 port;   /* local port it arrives at */
	__u8 family;   /* 4 or 6 */
	__u8 pad;      /* always 0 */
};

struct flow_value {
	__u8 from_addr[16]; /* the latched sender (FLOW_F_MATCH_SOURCE); IPv4: first 4 bytes */
	__u8 src_addr[16];  /* relay's outgoing local address */
	__u8 dst_addr[16];  /* latched peer address */
	__u32 ifindex;      /* egress interface; == ingress: XDP_TX, else bpf_redirect */
	__u32 flags;        /* FLOW_F_* */
	__be16 src_port;    /* relay's outgoing local port   } adjacent and in UDP header order, */
	__be16 dst_port;    /* latched peer port             } for one bpf_csum_diff() */
	__be16 from_port;   /* the latched sender's port (FLOW_F_MATCH_SOURCE) */
	__u16 pad;          /* 0 */
	__u8 src_mac[6];    /* MAC of the egress interface */
	__u8 dst_mac[6];    /* MAC of the next hop toward the peer */
	__u32 reserved;     /* 0 */
	__u64 packets;      /* written by this program only (atomic add) */
	__u64 bytes;        /* UDP payload bytes */
};

_Static_assert(sizeof(struct flow_key) == VOLTE_KEY_SIZE, "flow_key drifted from maps.py");
_Static_assert(sizeof(struct flow_value) == VOLTE_VALUE_SIZE, "flow_value drifted from maps.py");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VOLTE_MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

/* --- checksum arithmetic (RFC 1624: HC' = ~(~HC + ~m + m')) ------------------------------------- */
/* bpf_csum_diff(from, to) gives the one's complement sum of ~from + to over whole 32-bit words;
 * these fold such sums and apply them to a checksum field, in the byte order the fields are
 * stored in (the arithmetic is byte-order independent as long as it is consistent). */
static __always_inline __u32 csum_add(__u32 a, __u32 b)
{
	__u32 r = a + b;
	return r + (r < a); /* end-around carry */
}

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

static __always_inline __u16 csum_apply(__u16 check, __u32 diff)
{
	return (__u16)~csum_fold(csum_add((__u16)~check, diff));
}

static __always_inline __u32 csum_diff(void *from, void *to, __u32 size, __u32 seed)
{
	return (__u32)bpf_csum_diff(from, size, to, size, seed);
}

/* --- flow lookup ------------------------------------------------------------------------------------ */
/* The flow for packets to key: the exact local address first, then the wildcard entry of a
 * relay bound to 0.0.0.0 / :: (key->addr is zeroed for that second lookup). */
static __always_inline struct flow_value *find_flow(struct flow_key *key)
{
	struct flow_value *v = bpf_map_lookup_elem(&flows, key);
	if (v)
		return v;
	__builtin_memset(key->addr, 0, sizeof(key->addr));
	return bpf_map_lookup_elem(&flows, key);
}

/* --- shared tail: MACs, counters, transmit -------------------------------------------------------- */
static __always_inline int relay_out(struct xdp_md *ctx, struct ethhdr *eth,
				     struct flow_value *v, __u16 payload)
{
	__builtin_memcpy(eth->h_dest, v->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, v->src_mac, ETH_ALEN);
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, payload);
	if (v->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(v->ifindex, 0);
}

/* The ports, rewritten; the checksum sum of the change is added to *diff. */
static __always_inline void rewrite_ports(struct udphdr *udp, struct flow_value *v, __u32 *diff)
{
	*diff = csum_diff(&udp->source, &v->src_port, 4, *diff);
	udp->source = v->src_port;
	udp->dest = v->dst_port;
}

/* --- IPv4 ------------------------------------------------------------------------------------------ */
static __always_inline int relay_ipv4(struct xdp_md *ctx, struct ethhdr *eth, void *end)
{
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return XDP_PASS;
	if (ip->ihl != 5 || ip->version != 4 || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	if (ip->frag_off & be16(IPV4_MF | IPV4_OFFSET))
		return XDP_PASS;
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return XDP_PASS;

	__u16 ulen = from_be16(udp->len);
	if (ulen < sizeof(*udp) || from_be16(ip->tot_len) != sizeof(*ip) + ulen)
		return XDP_PASS;
	if ((void *)ip + sizeof(*ip) + ulen > end)
		return XDP_PASS;

	struct flow_key key = {};
	__builtin_memcpy(key.addr, &ip->daddr, 4);
	key.port = udp->dest;
	key.family = 4;
	struct flow_value *v = find_flow(&key);
	if (!v)
		return XDP_PASS;
	if ((v->flags & FLOW_F_MATCH_SOURCE) &&
	    (v->from_port != udp->source || *(__u32 *)v->from_addr != ip->saddr))
		return XDP_PASS; /* not the latched sender: userspace decides (re-latching) */

	/* Addresses: in the IP header checksum and in the UDP pseudo-header. */
	__u32 addr_diff = csum_diff(&ip->saddr, v->src_addr, 4, 0);
	addr_diff = csum_diff(&ip->daddr, v->dst_addr, 4, addr_diff);
	/* TTL shares a 16-bit word with the protocol; only the IP header checksum covers it. */
	__u16 ttl_old = *(__u16 *)&ip->ttl;
	ip->ttl = RELAY_TTL;
	__u16 ttl_new = *(__u16 *)&ip->ttl;
	__u32 ip_diff = csum_add(addr_diff, csum_add((__u16)~ttl_old, ttl_new));

	__builtin_memcpy(&ip->saddr, v->src_addr, 4);
	__builtin_memcpy(&ip->daddr, v->dst_addr, 4);
	ip->check = csum_apply(ip->check, ip_diff);

	__u32 udp_diff = addr_diff;
	rewrite_ports(udp, v, &udp_diff);
	if (v->flags & FLOW_F_ZERO_UDP_CSUM) {
		udp->check = 0;
	} else if (udp->check) { /* 0: the sender computed none; leave it so */
		__u16 c = csum_apply(udp->check, udp_diff);
		udp->check = c ? c : 0xffff;
	}
	return relay_out(ctx, eth, v, ulen - sizeof(*udp));
}

/* --- IPv6 ------------------------------------------------------------------------------------------ */
static __always_inline int relay_ipv6(struct xdp_md *ctx, struct ethhdr *eth, void *end)
{
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > end)
		return XDP_PASS;
	if (ip6->version != 6 || ip6->nexthdr != IPPROTO_UDP)
		return XDP_PASS; /* extension headers (fragments included) go to the stack */
	struct udphdr *udp = (void *)(ip6 + 1);
	if ((void *)(udp + 1) > end)
		return XDP_PASS;

	__u16 ulen = from_be16(udp->len);
	if (ulen < sizeof(*udp) || from_be16(ip6->payload_len) != ulen)
		return XDP_PASS;
	if ((void *)udp + ulen > end)
		return XDP_PASS;
	if (!udp->check)
		return XDP_PASS; /* mandatory over IPv6 (RFC 8200); let the stack drop it */

	struct flow_key key = {};
	__builtin_memcpy(key.addr, &ip6->daddr, 16);
	key.port = udp->dest;
	key.family = 6;
	struct flow_value *v = find_flow(&key);
	if (!v)
		return XDP_PASS;
	if (v->flags & FLOW_F_MATCH_SOURCE) {
		__u32 *from = (__u32 *)v->from_addr;
		__u32 *saddr = ip6->saddr.in6_u.u6_addr32;
		if (v->from_port != udp->source || from[0] != saddr[0] || from[1] != saddr[1] ||
		    from[2] != saddr[2] || from[3] != saddr[3])
			return XDP_PASS;
	}

	__u32 udp_diff = csum_diff(&ip6->saddr, v->src_addr, 16, 0);
	udp_diff = csum_diff(&ip6->daddr, v->dst_addr, 16, udp_diff);
	__builtin_memcpy(&ip6->saddr, v->src_addr, 16);
	__builtin_memcpy(&ip6->daddr, v->dst_addr, 16);
	ip6->hop_limit = RELAY_TTL; /* not covered by any checksum */

	rewrite_ports(udp, v, &udp_diff);
	__u16 c = csum_apply(udp->check, udp_diff);
	udp->check = c ? c : 0xffff;
	return relay_out(ctx, eth, v, ulen - sizeof(*udp));
}

SEC("xdp")
int volte_relay(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == be16(ETH_P_IP))
		return relay_ipv4(ctx, eth, end);
	if (eth->h_proto == be16(ETH_P_IPV6))
		return relay_ipv6(ctx, eth, end);
	return XDP_PASS; /* ARP, VLAN-tagged, anything else */
}

char _license[] SEC("license") = "GPL";
