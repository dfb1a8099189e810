/*-------------------------------------------------------------------------
 *
 * address.c
 *		Which peer addresses a delivery may connect to (SSRF guard).
 *
 * Called from curl's open-socket callback (http.c) with the very address
 * curl is about to connect to, so however a URL spells its host (127.1,
 * 2130706433, 0x7f.0.0.1, [::ffff:127.0.0.1], a name that resolves to a
 * private address) the check sees the resolved address, and no second
 * lookup can differ from the one checked (DNS rebinding).
 *
 * Unless webhook.allow_private_networks is on, loopback, private, link-
 * local, CGNAT, multicast, documentation, benchmarking and reserved ranges
 * are refused, IPv4 and IPv6 alike; IPv4-mapped (::ffff:0:0/96) and NAT64
 * (64:ff9b::/96) addresses are judged by the IPv4 address they carry.
 * webhook.allowed_networks opens chosen ranges again.
 *
 * The first half is plain C (the fuzz target and the unit test in
 * test/fuzz/ build it with -DWEBHOOK_ADDRESS_STANDALONE); the second reads
 * the parameters.
 *
 *-------------------------------------------------------------------------
 */
#include "address.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define V4(a, b, c, d, bits, name) {AF_INET, {a, b, c, d}, bits, name}
#define V6(bits, name, ...) {AF_INET6, {__VA_ARGS__}, bits, name}

/*
 * IANA's IPv4 and IPv6 special-purpose address registries (RFC 6890 and
 * successors), less the ranges that are globally reachable by design
 * (e.g. 192.31.196.0/24), plus multicast and the deprecated IPv6 forms
 * (site-local, 6to4, IPv4-compatible) through which a private IPv4
 * address might be reached.
 */
static const AddressRange address_blocked[] = {
	V4(0, 0, 0, 0, 8, "\"this\" network"),
	V4(10, 0, 0, 0, 8, "private"),
	V4(100, 64, 0, 0, 10, "carrier-grade NAT"),
	V4(127, 0, 0, 0, 8, "loopback"),
	V4(169, 254, 0, 0, 16, "link-local"),
	V4(172, 16, 0, 0, 12, "private"),
	V4(192, 0, 0, 0, 24, "IETF protocol assignments"),
	V4(192, 0, 2, 0, 24, "documentation"),
	V4(192, 88, 99, 0, 24, "6to4 relay anycast"),
	V4(192, 168, 0, 0, 16, "private"),
	V4(198, 18, 0, 0, 15, "benchmarking"),
	V4(198, 51, 100, 0, 24, "documentation"),
	V4(203, 0, 113, 0, 24, "documentation"),
	V4(224, 0, 0, 0, 4, "multicast"),
	V4(240, 0, 0, 0, 4, "reserved"),	/* and 255.255.255.255, broadcast */
	V6(128, "unspecified", 0),
	V6(128, "loopback", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1),
	V6(96, "IPv4-compatible", 0),
	V6(96, "IPv4-translated", 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0),
	V6(48, "local-use NAT64", 0x00, 0x64, 0xff, 0x9b, 0x00, 0x01),
	V6(64, "discard-only", 0x01, 0x00),
	V6(23, "IETF protocol assignments", 0x20, 0x01, 0x00, 0x00),	/* Teredo too */
	V6(32, "documentation", 0x20, 0x01, 0x0d, 0xb8),
	V6(16, "6to4", 0x20, 0x02),
	V6(20, "documentation", 0x3f, 0xff),
	V6(16, "segment routing", 0x5f, 0x00),
	V6(7, "unique local", 0xfc),
	V6(10, "link-local", 0xfe, 0x80),
	V6(10, "site-local", 0xfe, 0xc0),
	V6(8, "multicast", 0xff),
};

#define ADDRESS_BLOCKED_COUNT ((int) (sizeof(address_blocked) / sizeof(address_blocked[0])))

/* The 96-bit prefixes whose last 32 bits are an IPv4 address to judge. */
static const unsigned char address_v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
static const unsigned char address_nat64[12] = {0x00, 0x64, 0xff, 0x9b};

/*
 * The blocked ranges, for tests.
 */
const AddressRange *
address_blocked_ranges(int *count)
{
	*count = ADDRESS_BLOCKED_COUNT;
	return address_blocked;
}

/*
 * Whether the first prefix bits of a and b agree.
 */
static bool
address_prefix_matches(const unsigned char *a, const unsigned char *b, int prefix)
{
	int			whole = prefix / 8;
	int			rest = prefix % 8;

	if (memcmp(a, b, whole) != 0)
		return false;
	if (rest == 0)
		return true;
	return ((a[whole] ^ b[whole]) & (0xff << (8 - rest)) & 0xff) == 0;
}

/*
 * Parse one CIDR ("10.1.0.0/16", "fd00::/8", or a bare address).
 */
bool
address_parse_cidr(const char *text, AddressRange *range)
{
	char		copy[INET6_ADDRSTRLEN + 8];
	char	   *slash;
	int			max_bits;

	if (strlen(text) >= sizeof(copy))
		return false;
	strcpy(copy, text);
	slash = strchr(copy, '/');
	if (slash != NULL)
		*slash = '\0';
	memset(range, 0, sizeof(*range));
	if (inet_pton(AF_INET, copy, range->bytes) == 1)
	{
		range->family = AF_INET;
		max_bits = 32;
	}
	else if (inet_pton(AF_INET6, copy, range->bytes) == 1)
	{
		range->family = AF_INET6;
		max_bits = 128;
	}
	else
		return false;
	range->prefix = max_bits;
	if (slash != NULL)
	{
		const char *digits = slash + 1;
		int			bits = 0;

		/* one to three decimal digits, no sign, no space */
		if (*digits == '\0' || strlen(digits) > 3)
			return false;
		for (const char *p = digits; *p != '\0'; p++)
		{
			if (*p < '0' || *p > '9')
				return false;
			bits = bits * 10 + (*p - '0');
		}
		if (bits > max_bits)
			return false;
		range->prefix = bits;
	}
	range->name = "webhook.allowed_networks";
	return true;
}

/*
 * Parse a list of CIDRs separated by commas and/or spaces into malloc'd
 * ranges; on failure, say which entry is wrong in problem.
 */
bool
address_parse_list(const char *list, AddressRange **ranges, int *count,
				   char *problem, size_t problem_size)
{
	char	   *copy = strdup(list ? list : "");
	char	   *item;
	char	   *saveptr = NULL;
	int			capacity = 0;

	*count = 0;
	*ranges = NULL;
	if (copy == NULL)
	{
		snprintf(problem, problem_size, "out of memory");
		return false;
	}
	for (item = strtok_r(copy, ", \t", &saveptr); item != NULL;
		 item = strtok_r(NULL, ", \t", &saveptr))
	{
		if (*count == capacity)
		{
			int			grown_capacity = capacity == 0 ? 8 : 2 * capacity;
			AddressRange *grown = realloc(*ranges, grown_capacity * sizeof(AddressRange));

			if (grown == NULL)
			{
				snprintf(problem, problem_size, "out of memory");
				goto fail;
			}
			*ranges = grown;
			capacity = grown_capacity;
		}
		if (!address_parse_cidr(item, &(*ranges)[*count]))
		{
			snprintf(problem, problem_size,
					 "\"%.64s\" is not an address range such as \"10.0.0.0/8\" or \"fd00::/8\".",
					 item);
			goto fail;
		}
		(*count)++;
	}
	free(copy);
	return true;

fail:
	free(copy);
	free(*ranges);
	*ranges = NULL;
	*count = 0;
	return false;
}

/*
 * The range of table that holds the address, or NULL.
 */
static const AddressRange *
address_find(const AddressRange *table, int count, int family,
			 const unsigned char *bytes)
{
	for (int i = 0; i < count; i++)
		if (table[i].family == family &&
			address_prefix_matches(bytes, table[i].bytes, table[i].prefix))
			return &table[i];
	return NULL;
}

/*
 * Check an address against the blocked ranges and the operator's allowed
 * ones; on refusal, say why in why.
 */
bool
address_check(int family, const unsigned char *bytes, bool allow_private,
			  const AddressRange *allowed, int allowed_count,
			  char *why, size_t why_size)
{
	const AddressRange *blocked;
	int			judged_family = family;
	const unsigned char *judged = bytes;
	char		shown[INET6_ADDRSTRLEN];
	char		network[INET6_ADDRSTRLEN];

	if (family != AF_INET && family != AF_INET6)
	{
		snprintf(why, why_size, "address family %d is neither IPv4 nor IPv6", family);
		return false;
	}
	if (allow_private)
		return true;

	/*
	 * IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) addresses
	 * are judged, blocked and allowed ranges alike, as the IPv4 address they
	 * carry: the same IPv4 host is reached either way.
	 */
	if (family == AF_INET6 &&
		(memcmp(bytes, address_v4_mapped, 12) == 0 ||
		 memcmp(bytes, address_nat64, 12) == 0))
	{
		judged_family = AF_INET;
		judged = bytes + 12;
	}
	if (address_find(allowed, allowed_count, judged_family, judged) != NULL)
		return true;
	blocked = address_find(address_blocked, ADDRESS_BLOCKED_COUNT, judged_family, judged);
	if (blocked == NULL)
		return true;

	inet_ntop(family, bytes, shown, sizeof(shown));
	inet_ntop(blocked->family, blocked->bytes, network, sizeof(network));
	snprintf(why, why_size, "%s is in %s/%d (%s)",
			 shown, network, blocked->prefix, blocked->name);
	return false;
}

#ifndef WEBHOOK_ADDRESS_STANDALONE
#include "webhook_outbox.h"

#include <sys/socket.h>

#include "delivery.h"

/* webhook.allowed_networks, parsed by its check hook */
typedef struct AllowedNetworks
{
	int			count;
	AddressRange ranges[FLEXIBLE_ARRAY_MEMBER];
} AllowedNetworks;

static const AllowedNetworks *address_allowed_networks = NULL;

/*
 * Check hook of webhook.allowed_networks: refuse a list that does not
 * parse, so that a typo is an error at SET or reload, not a silently
 * ignored setting; keep the parsed ranges as the setting's extra data.
 */
bool
address_check_allowed_networks(char **newval, void **extra, GucSource source)
{
	AddressRange *ranges;
	AllowedNetworks *parsed;
	int			count;
	char		problem[128];

	(void) source;
	if (!address_parse_list(*newval, &ranges, &count, problem, sizeof(problem)))
	{
		GUC_check_errdetail("%s", problem);
		return false;
	}
	/* GUC extra data is malloc'd, in one chunk */
	parsed = malloc(offsetof(AllowedNetworks, ranges) + count * sizeof(AddressRange));
	if (parsed == NULL)
	{
		free(ranges);
		GUC_check_errcode(ERRCODE_OUT_OF_MEMORY);
		GUC_check_errdetail("Out of memory.");
		return false;
	}
	parsed->count = count;
	if (count > 0)
		memcpy(parsed->ranges, ranges, count * sizeof(AddressRange));
	free(ranges);
	*extra = parsed;
	return true;
}

/*
 * Assign hook of webhook.allowed_networks.
 */
void
address_assign_allowed_networks(const char *newval, void *extra)
{
	(void) newval;
	address_allowed_networks = (const AllowedNetworks *) extra;
}

/*
 * Whether a delivery may connect to address, per the current parameters.
 */
bool
address_allowed(const struct sockaddr *address, char *why, size_t why_size)
{
	const AddressRange *allowed = NULL;
	int			allowed_count = 0;

	if (address_allowed_networks != NULL)
	{
		allowed = address_allowed_networks->ranges;
		allowed_count = address_allowed_networks->count;
	}
	if (address->sa_family == AF_INET)
		return address_check(AF_INET,
							 (const unsigned char *) &((const struct sockaddr_in *) address)->sin_addr,
							 webhook_allow_private_networks,
							 allowed, allowed_count, why, why_size);
	if (address->sa_family == AF_INET6)
		return address_check(AF_INET6,
							 (const unsigned char *) &((const struct sockaddr_in6 *) address)->sin6_addr,
							 webhook_allow_private_networks,
							 allowed, allowed_count, why, why_size);
	return address_check(address->sa_family, NULL, false, NULL, 0, why, why_size);
}

/*
 * Whether a URL's host, when it spells an address itself (an IPv4 address
 * in any form the resolver reads, such as 127.1; an IPv6 literal; or
 * "localhost", which curl answers with the loopback address), is one a
 * delivery may connect to. A name is not resolved here, so true says only
 * that nothing is known to be blocked; the check at connect time decides.
 */
bool
address_literal_allowed(const char *host, char *why, size_t why_size)
{
	struct sockaddr_in v4;
	struct sockaddr_in6 v6;
	size_t		len = strlen(host);

	memset(&v4, 0, sizeof(v4));
	memset(&v6, 0, sizeof(v6));
	v4.sin_family = AF_INET;
	v6.sin6_family = AF_INET6;
	if (len > 0 && host[len - 1] == '.')
		len--;
	if ((len == 9 && pg_strncasecmp(host, "localhost", 9) == 0) ||
		(len > 10 && pg_strncasecmp(host + len - 10, ".localhost", 10) == 0))
	{
		v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		return address_allowed((struct sockaddr *) &v4, why, why_size);
	}
	if (inet_aton(host, &v4.sin_addr) != 0)
		return address_allowed((struct sockaddr *) &v4, why, why_size);
	if (inet_pton(AF_INET6, host, &v6.sin6_addr) == 1)
		return address_allowed((struct sockaddr *) &v6, why, why_size);
	return true;
}
#endif
