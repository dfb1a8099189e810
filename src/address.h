/*-------------------------------------------------------------------------
 *
 * address.h
 *		Address ranges and the SSRF check, in plain C so that the fuzz
 *		target and unit checks link them without a server.
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
	unsigned char bytes[16];
	int			prefix;			/* bits */
	const char *name;
} AddressRange;

extern bool address_parse_cidr(const char *text, AddressRange *range);
extern bool address_parse_list(const char *list, AddressRange **ranges, int *count,
							   char *problem, size_t problem_size);
extern bool address_check(int family, const unsigned char *bytes, bool allow_private,
						  const AddressRange *allowed, int allowed_count,
						  char *why, size_t why_size);

#endif							/* WEBHOOK_ADDRESS_H */
