/*-------------------------------------------------------------------------
 *
 * address.c
 *		Which peer addresses a delivery may connect to (SSRF guard).
 *
 * Called from curl's open-socket callback with the very address curl is
 * about to connect to, so however a URL spells its host (127.1,
 * 2130706433, 0x7f.0.0.1, [::ffff:127.0.0.1], a name that resolves to a
 * private address) the check sees the resolved address, and no second
 * lookup can differ from the one checked.
 *
 * Unless webhook.allow_private_networks is on, loopback, private, link-
 * local, CGNAT, multicast, documentation and reserved ranges are refused,
 * IPv4 and IPv6 alike (IPv4-mapped and -translated IPv6 by their IPv4
 * part); webhook.allowed_networks opens chosen ranges again.
 *
 *-------------------------------------------------------------------------
 */
#include "address.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define V4(a, b, c, d, bits, name) {AF_INET, {a, b, c, d}, bits, name}

static const AddressRange address_blocked[] = {
	V4(0, 0, 0, 0, 8, "\"this\" network"),
	V4(10, 0, 0, 0, 8, "private network"),
	V4(100, 64, 0, 0, 10, "carrier-grade NAT"),
	V4(127, 0, 0, 0, 8, "loopback"),
	V4(169, 254, 0, 0, 16, "link-local"),
	V4(172, 16, 0, 0, 12, "private network"),
	V4(192, 0, 0, 0, 24, "IETF protocol assignments"),
	V4(192, 0, 2, 0, 24, "documentation"),
	V4(192, 88, 99, 0, 24, "6to4 relay anycast"),
	V4(192, 168, 0, 0, 16, "private network"),
	V4(198, 18, 0, 0, 15, "benchmarking"),
	V4(198, 51, 100, 0, 24, "documentation"),
	V4(203, 0, 113, 0, 24, "documentation"),
	V4(224, 0, 0, 0, 4, "multicast"),
	V4(240, 0, 0, 0, 4, "reserved"),
	{AF_INET6, {0}, 128, "unspecified"},
	{AF_INET6, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 128, "loopback"},
	{AF_INET6, {0}, 96, "IPv4-compatible"},
	{AF_INET6, {0x01, 0x00}, 64, "discard-only"},
	{AF_INET6, {0x20, 0x01, 0x00, 0x00}, 23, "IETF protocol assignments"},
	{AF_INET6, {0x20, 0x01, 0x0d, 0xb8}, 32, "documentation"},
	{AF_INET6, {0x3f, 0xff}, 20, "documentation"},
	{AF_INET6, {0xfc}, 7, "unique local"},
	{AF_INET6, {0xfe, 0x80}, 10, "link-local"},
	{AF_INET6, {0xfe, 0xc0}, 10, "site-local"},
	{AF_INET6, {0xff}, 8, "multicast"},
};

#define ADDRESS_BLOCKED_COUNT ((int) (sizeof(address_blocked) / sizeof(address_blocked[0])))


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
	return ((a[whole] ^ b[whole]) & (0xff << (8 - rest))) == 0;
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
		char	   *end;
		long		bits = strtol(slash + 1, &end, 10);

		if (end == slash + 1 || *end != '\0' || bits < 0 || bits > max_bits)
			return false;
		range->prefix = (int) bits;
	}
	range->name = "webhook.allowed_networks";
	return true;
}

/*
 * Parse a comma-separated CIDR list into malloc'd ranges; on failure, say
 * which entry is wrong in problem.
 */
bool
address_parse_list(const char *list, AddressRange **ranges, int *count,
				   char *problem, size_t problem_size)
{
	char	   *copy = strdup(list ? list : "");
	char	   *item;
	char	   *saveptr = NULL;
	int			capacity = 8;

	*count = 0;
	*ranges = malloc(capacity * sizeof(AddressRange));
	if (copy == NULL || *ranges == NULL)
	{
		free(copy);
		snprintf(problem, problem_size, "out of memory");
		return false;
	}
	for (item = strtok_r(copy, ", ", &saveptr); item != NULL;
		 item = strtok_r(NULL, ", ", &saveptr))
	{
		if (*count == capacity)
		{
			AddressRange *grown = realloc(*ranges, 2 * capacity * sizeof(AddressRange));

			if (grown == NULL)
			{
				snprintf(problem, problem_size, "out of memory");
				free(copy);
				return false;
			}
			*ranges = grown;
			capacity *= 2;
		}
		if (!address_parse_cidr(item, &(*ranges)[*count]))
		{
			snprintf(problem, problem_size, "\"%s\" is not an address range such as \"10.0.0.0/8\" or \"fd00::/8\"", item);
			free(copy);
			return false;
		}
		(*count)++;
	}
	free(copy);
	return true;
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
	unsigned char v4[4];
	char		shown[INET6_ADDRSTRLEN];

	if (allow_private)
		return true;
	if (address_find(allowed, allowed_count, family, bytes) != NULL)
		return true;

	blocked = address_find(address_blocked, ADDRESS_BLOCKED_COUNT, family, bytes);

	/* IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d): their IPv4 */
	if (blocked == NULL && family == AF_INET6)
	{
		static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
		static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b};

		if (memcmp(bytes, mapped, 12) == 0 || memcmp(bytes, nat64, 12) == 0)
		{
			memcpy(v4, bytes + 12, 4);
			if (address_find(allowed, allowed_count, AF_INET, v4) != NULL)
				return true;
			blocked = address_find(address_blocked, ADDRESS_BLOCKED_COUNT, AF_INET, v4);
		}
	}
	if (blocked == NULL)
		return true;

	inet_ntop(family, bytes, shown, sizeof(shown));
	snprintf(why, why_size, "%s is a %s address (webhook.allow_private_networks is off)",
			 shown, blocked->name);
	return false;
}

#ifndef WEBHOOK_ADDRESS_STANDALONE
#include "webhook_outbox.h"

#include <sys/socket.h>

#include "delivery.h"

/* webhook.allowed_networks, parsed; parsed again when the setting changes */
static AddressRange *address_allowed_ranges = NULL;
static int	address_allowed_count = 0;
static char *address_allowed_source = NULL;

/*
 * Whether a delivery may connect to address, per the current parameters.
 */
bool
address_allowed(const struct sockaddr *address, char *why, size_t why_size)
{
	if (address_allowed_source == NULL ||
		strcmp(address_allowed_source, webhook_allowed_networks) != 0)
	{
		char		problem[256];

		free(address_allowed_ranges);
		free(address_allowed_source);
		address_allowed_source = strdup(webhook_allowed_networks);
		if (!address_parse_list(webhook_allowed_networks, &address_allowed_ranges,
								&address_allowed_count, problem, sizeof(problem)))
		{
			ereport(WARNING,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("webhook.allowed_networks ignored: %s", problem)));
			address_allowed_count = 0;
		}
	}

	if (address->sa_family == AF_INET)
		return address_check(AF_INET,
							 (const unsigned char *) &((const struct sockaddr_in *) address)->sin_addr,
							 webhook_allow_private_networks,
							 address_allowed_ranges, address_allowed_count, why, why_size);
	if (address->sa_family == AF_INET6)
		return address_check(AF_INET6,
							 (const unsigned char *) &((const struct sockaddr_in6 *) address)->sin6_addr,
							 webhook_allow_private_networks,
							 address_allowed_ranges, address_allowed_count, why, why_size);
	snprintf(why, why_size, "address family %d is not IPv4 or IPv6", address->sa_family);
	return false;
}
#endif
