/*-------------------------------------------------------------------------
 *
 * address.h
 *		Address ranges and the SSRF check, in plain C so that the fuzz
 *		target and the unit test (test/fuzz/) link them without a server.
 *
 * Build address.c with -DWEBHOOK_ADDRESS_STANDALONE to leave out the part
 * that reads the webhook.* parameters.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WEBHOOK_ADDRESS_H
#define WEBHOOK_ADDRESS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct AddressRange
{
	int			family;			/* AF_INET or AF_INET6 */
	unsigned char bytes[16];	/* network byte order; 4 used for AF_INET */
	int			prefix;			/* bits */
	const char *name;			/* what the range is, e.g. "loopback" */
} AddressRange;

/* Parse "10.1.0.0/16", "fd00::/8" or a bare address (a /32 or /128). */
extern bool address_parse_cidr(const char *text, AddressRange *range);

/*
 * Parse a list of ranges separated by commas and/or spaces into a malloc'd
 * array (free() it; NULL when the list is empty). On failure *ranges is
 * NULL, *count 0, and problem says which entry is wrong.
 */
extern bool address_parse_list(const char *list, AddressRange **ranges, int *count,
							   char *problem, size_t problem_size);

/*
 * Whether a delivery may connect to the address (4 or 16 bytes, network
 * order). Unless allow_private, addresses in the blocked ranges are refused
 * unless one of the allowed ranges holds them; IPv4-mapped and NAT64 IPv6
 * addresses are judged by the IPv4 address they carry. On refusal, why
 * reads e.g. "127.0.0.1 is in 127.0.0.0/8 (loopback)".
 */
extern bool address_check(int family, const unsigned char *bytes, bool allow_private,
						  const AddressRange *allowed, int allowed_count,
						  char *why, size_t why_size);

/* The blocked ranges, for tests. */
extern const AddressRange *address_blocked_ranges(int *count);

#endif							/* WEBHOOK_ADDRESS_H */
