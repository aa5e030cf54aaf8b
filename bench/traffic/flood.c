// SPDX-License-Identifier: GPL-2.0
/*
 * Spoofed TCP SYN or ACK flood for bench/flood.py: 54-byte frames (Ethernet,
 * IPv4 with DF and TTL 64, TCP with no options, window 65535, destination
 * port 80, correct checksums) from random sources in SRC_NET/16 with random
 * source ports and sequence (and, for ACK, acknowledgement) numbers, sent
 * with sendmmsg on an AF_PACKET socket. Unlike trafgen's TX ring it waits
 * (poll, then retry) when the device pushes back (EAGAIN/ENOBUFS: a veth
 * whose peer runs XDP stops its queue while the peer's ring is full)
 * instead of exiting.
 *
 * Bounded: stops after SECONDS, after MAX_PACKETS frames, or on
 * SIGINT/SIGTERM, whichever comes first; then prints one JSON line
 * {"sent": N, "waits": N, "seconds": S}.
 *
 * usage: flood IFACE DST_MAC DST_IP syn|ack SECONDS MAX_PACKETS [SRC_NET]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FRAME 54
#define BATCH 64

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static uint32_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 16);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint16_t csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xFFFF) + (sum >> 16);
	return (uint16_t)~sum;
}

static uint32_t csum_add(uint32_t sum, const uint8_t *p, int len)
{
	for (int i = 0; i + 1 < len; i += 2)
		sum += (p[i] << 8) | p[i + 1];
	if (len & 1)
		sum += p[len - 1] << 8;
	return sum;
}

static int parse_mac(const char *s, uint8_t *mac)
{
	return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3],
		      &mac[4], &mac[5]) == 6 ? 0 : -1;
}

static void build(uint8_t *f, const uint8_t *dmac, const uint8_t *smac, uint32_t daddr,
		  uint32_t net, int ack)
{
	uint8_t *ip = f + 14, *tcp = f + 34;
	uint32_t saddr = net | (rnd() & 0xFFFF), seq = rnd() ^ (rnd() << 16);
	uint32_t aseq = ack ? rnd() ^ (rnd() << 16) : 0, sum;
	uint16_t sport = 1024 + rnd() % (65536 - 1024), c;

	memcpy(f, dmac, 6);
	memcpy(f + 6, smac, 6);
	f[12] = 0x08, f[13] = 0x00;
	memset(ip, 0, 40);
	ip[0] = 0x45;
	ip[3] = 40;                       /* total length */
	ip[6] = 0x40;                     /* DF */
	ip[8] = 64;
	ip[9] = IPPROTO_TCP;
	memcpy(ip + 12, &(uint32_t){ htonl(saddr) }, 4);
	memcpy(ip + 16, &(uint32_t){ htonl(daddr) }, 4);
	c = csum_fold(csum_add(0, ip, 20));
	ip[10] = c >> 8, ip[11] = c & 0xFF;
	tcp[0] = sport >> 8, tcp[1] = sport & 0xFF;
	tcp[2] = 0, tcp[3] = 80;
	memcpy(tcp + 4, &(uint32_t){ htonl(seq) }, 4);
	memcpy(tcp + 8, &(uint32_t){ htonl(aseq) }, 4);
	tcp[12] = 5 << 4;
	tcp[13] = ack ? 0x10 : 0x02;
	tcp[14] = 0xFF, tcp[15] = 0xFF;
	sum = csum_add(0, ip + 12, 8) + IPPROTO_TCP + 20;
	c = csum_fold(csum_add(sum, tcp, 20));
	tcp[16] = c >> 8, tcp[17] = c & 0xFF;
}

int main(int argc, char **argv)
{
	uint8_t dmac[6], smac[6], frames[BATCH][FRAME];
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	struct sockaddr_ll sll = { 0 };
	struct in_addr dst, net = { 0 };
	unsigned long long sent = 0, waits = 0, max;
	double seconds, t0, deadline;
	int fd, ack, ifindex;

	if (argc < 7) {
		fprintf(stderr, "usage: %s IFACE DST_MAC DST_IP syn|ack SECONDS MAX_PACKETS "
			"[SRC_NET]\n", argv[0]);
		return 2;
	}
	ifindex = if_nametoindex(argv[1]);
	if (!ifindex || parse_mac(argv[2], dmac) || !inet_aton(argv[3], &dst) ||
	    (strcmp(argv[4], "syn") && strcmp(argv[4], "ack"))) {
		fprintf(stderr, "flood: bad interface, MAC, address or kind\n");
		return 2;
	}
	ack = !strcmp(argv[4], "ack");
	seconds = atof(argv[5]);
	max = strtoull(argv[6], NULL, 10);
	if (!inet_aton(argc > 7 ? argv[7] : "198.18.0.0", &net)) {
		fprintf(stderr, "flood: bad source network\n");
		return 2;
	}
	if (seconds <= 0 || seconds > 3600 || !max) {
		fprintf(stderr, "flood: SECONDS must be in (0, 3600], MAX_PACKETS > 0\n");
		return 2;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	rng ^= (uint64_t)getpid() << 32 ^ (uint64_t)time(NULL);

	fd = socket(AF_PACKET, SOCK_RAW, 0);
	if (fd < 0) {
		perror("flood: socket");
		return 1;
	}
	sll.sll_family = AF_PACKET;
	sll.sll_ifindex = ifindex;
	sll.sll_protocol = htons(ETH_P_IP);
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll))) {
		perror("flood: bind");
		return 1;
	}
	{
		/* the source MAC: the interface's own */
		struct sockaddr_ll me;
		socklen_t len = sizeof(me);

		if (getsockname(fd, (struct sockaddr *)&me, &len) || me.sll_halen != 6) {
			perror("flood: getsockname");
			return 1;
		}
		memcpy(smac, me.sll_addr, 6);
	}
	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = frames[i];
		iov[i].iov_len = FRAME;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	t0 = now();
	deadline = t0 + seconds;
	while (!stop && sent < max) {
		int n = BATCH, done = 0;

		if ((sent & 0x3FF) < BATCH && now() >= deadline)
			break;
		if ((unsigned long long)n > max - sent)
			n = (int)(max - sent);
		for (int i = 0; i < n; i++)
			build(frames[i], dmac, smac, ntohl(dst.s_addr), ntohl(net.s_addr), ack);
		while (done < n && !stop) {
			int r = sendmmsg(fd, msgs + done, n - done, MSG_DONTWAIT);

			if (r > 0) {
				done += r;
				continue;
			}
			if (r < 0 && errno != EAGAIN && errno != ENOBUFS && errno != EINTR) {
				perror("flood: sendmmsg");
				return 1;
			}
			waits++;
			if (now() >= deadline)
				break;
			poll(&(struct pollfd){ .fd = fd, .events = POLLOUT }, 1, 1);
		}
		sent += done;
		if (done < n)
			break;
	}
	printf("{\"sent\": %llu, \"waits\": %llu, \"seconds\": %.4f}\n", sent, waits, now() - t0);
	return 0;
}
