/*-------------------------------------------------------------------------
 *
 * address_test.c
 *		Unit test of the SSRF range table and checks of src/address.c,
 *		printing TAP. Built and run by test/t/100_ssrf.pl (every `make
 *		test`) and by test/fuzz/run:
 *
 *   cc -DWEBHOOK_ADDRESS_STANDALONE -Isrc src/address.c test/fuzz/address_test.c
 *
 * Every blocked range has an address inside it, one just outside it where
 * that is public, and its IPv4-mapped and NAT64 forms for the IPv4 ones;
 * webhook.allowed_networks lists are parsed and open exactly their ranges.
 *
 *-------------------------------------------------------------------------
 */
#include "address.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int	tests = 0;
static int	failures = 0;

/* Report one TAP result. */
static void
ok(int passed, const char *format, const char *a, const char *b)
{
	tests++;
	if (!passed)
		failures++;
	printf("%sok %d - ", passed ? "" : "not ", tests);
	printf(format, a, b);
	printf("\n");
}

/* Parse an address of either family into bytes; return its family. */
static int
parse_address(const char *text, unsigned char *bytes)
{
	memset(bytes, 0, 16);
	if (inet_pton(AF_INET, text, bytes) == 1)
		return AF_INET;
	if (inet_pton(AF_INET6, text, bytes) == 1)
		return AF_INET6;
	fprintf(stderr, "test address \"%s\" does not parse\n", text);
	exit(2);
}

/*
 * Check one address against allowed (a list as webhook.allowed_networks
 * takes it); expect refusal when reason is not NULL, with that reason.
 */
static void
expect(const char *text, const char *allowed_list, const char *reason)
{
	unsigned char bytes[16];
	int			family = parse_address(text, bytes);
	AddressRange *allowed;
	int			allowed_count;
	char		problem[256];
	char		why[128] = "";
	bool		passed;
	char		label[256];

	if (!address_parse_list(allowed_list, &allowed, &allowed_count, problem, sizeof(problem)))
	{
		fprintf(stderr, "allowed list \"%s\": %s\n", allowed_list, problem);
		exit(2);
	}
	passed = address_check(family, bytes, false, allowed, allowed_count, why, sizeof(why));
	snprintf(label, sizeof(label), "%s%s%s", text,
			 allowed_list[0] ? " with allowed_networks " : "", allowed_list);
	if (reason == NULL)
		ok(passed, "%s is allowed%s", label, passed ? "" : why);
	else
		ok(!passed && strcmp(why, reason) == 0, "%s is refused: %s", label, why);

	/* allow_private_networks = on lets everything through */
	if (!address_check(family, bytes, true, NULL, 0, why, sizeof(why)))
		ok(0, "%s%s is allowed with allow_private_networks", text, "");
	free(allowed);
}

int
main(void)
{
	static const struct
	{
		const char *address;
		const char *reason;		/* NULL: allowed */
	}			cases[] = {
		/* IPv4, each range from its first to its last address */
		{"0.0.0.0", "0.0.0.0 is in 0.0.0.0/8 (\"this\" network)"},
		{"0.255.255.255", "0.255.255.255 is in 0.0.0.0/8 (\"this\" network)"},
		{"1.0.0.0", NULL},
		{"9.255.255.255", NULL},
		{"10.0.0.0", "10.0.0.0 is in 10.0.0.0/8 (private)"},
		{"10.255.255.255", "10.255.255.255 is in 10.0.0.0/8 (private)"},
		{"11.0.0.0", NULL},
		{"100.63.255.255", NULL},
		{"100.64.0.0", "100.64.0.0 is in 100.64.0.0/10 (carrier-grade NAT)"},
		{"100.127.255.255", "100.127.255.255 is in 100.64.0.0/10 (carrier-grade NAT)"},
		{"100.128.0.0", NULL},
		{"126.255.255.255", NULL},
		{"127.0.0.1", "127.0.0.1 is in 127.0.0.0/8 (loopback)"},
		{"127.255.255.254", "127.255.255.254 is in 127.0.0.0/8 (loopback)"},
		{"128.0.0.0", NULL},
		{"169.253.255.255", NULL},
		{"169.254.169.254", "169.254.169.254 is in 169.254.0.0/16 (link-local)"},
		{"169.255.0.0", NULL},
		{"172.15.255.255", NULL},
		{"172.16.0.0", "172.16.0.0 is in 172.16.0.0/12 (private)"},
		{"172.31.255.255", "172.31.255.255 is in 172.16.0.0/12 (private)"},
		{"172.32.0.0", NULL},
		{"192.0.0.8", "192.0.0.8 is in 192.0.0.0/24 (IETF protocol assignments)"},
		{"192.0.1.0", NULL},
		{"192.0.2.1", "192.0.2.1 is in 192.0.2.0/24 (documentation)"},
		{"192.88.99.1", "192.88.99.1 is in 192.88.99.0/24 (6to4 relay anycast)"},
		{"192.167.255.255", NULL},
		{"192.168.0.0", "192.168.0.0 is in 192.168.0.0/16 (private)"},
		{"192.168.255.255", "192.168.255.255 is in 192.168.0.0/16 (private)"},
		{"192.169.0.0", NULL},
		{"198.17.255.255", NULL},
		{"198.18.0.0", "198.18.0.0 is in 198.18.0.0/15 (benchmarking)"},
		{"198.19.255.255", "198.19.255.255 is in 198.18.0.0/15 (benchmarking)"},
		{"198.20.0.0", NULL},
		{"198.51.100.7", "198.51.100.7 is in 198.51.100.0/24 (documentation)"},
		{"203.0.113.200", "203.0.113.200 is in 203.0.113.0/24 (documentation)"},
		{"203.0.114.0", NULL},
		{"223.255.255.255", NULL},
		{"224.0.0.1", "224.0.0.1 is in 224.0.0.0/4 (multicast)"},
		{"239.255.255.250", "239.255.255.250 is in 224.0.0.0/4 (multicast)"},
		{"240.0.0.1", "240.0.0.1 is in 240.0.0.0/4 (reserved)"},
		{"255.255.255.255", "255.255.255.255 is in 240.0.0.0/4 (reserved)"},
		{"8.8.8.8", NULL},
		{"93.184.216.34", NULL},

		/* IPv6 */
		{"::", ":: is in ::/128 (unspecified)"},
		{"::1", "::1 is in ::1/128 (loopback)"},
		{"::2", "::2 is in ::/96 (IPv4-compatible)"},
		{"::127.0.0.1", "::127.0.0.1 is in ::/96 (IPv4-compatible)"},
		{"::8.8.8.8", "::8.8.8.8 is in ::/96 (IPv4-compatible)"},
		{"::ffff:0:127.0.0.1", "::ffff:0:7f00:1 is in ::ffff:0:0:0/96 (IPv4-translated)"},
		{"64:ff9b:1::1", "64:ff9b:1::1 is in 64:ff9b:1::/48 (local-use NAT64)"},
		{"100::1", "100::1 is in 100::/64 (discard-only)"},
		{"100:0:0:1::", NULL},
		{"2001::1", "2001::1 is in 2001::/23 (IETF protocol assignments)"},
		{"2001:1ff:ffff::1", "2001:1ff:ffff::1 is in 2001::/23 (IETF protocol assignments)"},
		{"2001:200::1", NULL},
		{"2001:db8::1", "2001:db8::1 is in 2001:db8::/32 (documentation)"},
		{"2001:db9::1", NULL},
		{"2002:7f00:1::1", "2002:7f00:1::1 is in 2002::/16 (6to4)"},
		{"2606:4700:4700::1111", NULL},
		{"2a00:1450:4001:80b::200e", NULL},
		{"3fff:fff::1", "3fff:fff::1 is in 3fff::/20 (documentation)"},
		{"3fff:1000::1", NULL},
		{"5f00::1", "5f00::1 is in 5f00::/16 (segment routing)"},
		{"fc00::1", "fc00::1 is in fc00::/7 (unique local)"},
		{"fdff:ffff::1", "fdff:ffff::1 is in fc00::/7 (unique local)"},
		{"fe00::1", NULL},
		{"fe80::1", "fe80::1 is in fe80::/10 (link-local)"},
		{"febf:ffff::1", "febf:ffff::1 is in fe80::/10 (link-local)"},
		{"fec0::1", "fec0::1 is in fec0::/10 (site-local)"},
		{"ff02::1", "ff02::1 is in ff00::/8 (multicast)"},

		/* IPv4-mapped and NAT64 IPv6: judged by the IPv4 address they carry */
		{"::ffff:127.0.0.1", "::ffff:127.0.0.1 is in 127.0.0.0/8 (loopback)"},
		{"::ffff:10.1.2.3", "::ffff:10.1.2.3 is in 10.0.0.0/8 (private)"},
		{"::ffff:169.254.169.254", "::ffff:169.254.169.254 is in 169.254.0.0/16 (link-local)"},
		{"::ffff:100.64.0.1", "::ffff:100.64.0.1 is in 100.64.0.0/10 (carrier-grade NAT)"},
		{"::ffff:0.0.0.0", "::ffff:0.0.0.0 is in 0.0.0.0/8 (\"this\" network)"},
		{"::ffff:8.8.8.8", NULL},
		{"64:ff9b::127.0.0.1", "64:ff9b::7f00:1 is in 127.0.0.0/8 (loopback)"},
		{"64:ff9b::192.168.1.1", "64:ff9b::c0a8:101 is in 192.168.0.0/16 (private)"},
		{"64:ff9b::8.8.8.8", NULL},
	};
	int			count;
	const AddressRange *table = address_blocked_ranges(&count);
	AddressRange *ranges;
	AddressRange range;
	int			range_count;
	char		problem[256];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		expect(cases[i].address, "", cases[i].reason);

	/* every entry of the table is covered by a case above */
	for (int i = 0; i < count; i++)
	{
		char		network[64];
		char		cidr[80];
		bool		covered = false;

		inet_ntop(table[i].family, table[i].bytes, network, sizeof(network));
		snprintf(cidr, sizeof(cidr), " is in %s/%d (", network, table[i].prefix);
		for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
			if (cases[c].reason != NULL && strstr(cases[c].reason, cidr) != NULL)
				covered = true;
		ok(covered, "range%s%s) has a test case", cidr, table[i].name);
	}

	/* webhook.allowed_networks opens exactly what it lists */
	expect("127.0.0.1", "127.0.0.0/8", NULL);
	expect("127.255.0.1", "127.0.0.0/8", NULL);
	expect("::ffff:127.0.0.1", "127.0.0.0/8", NULL);
	expect("64:ff9b::127.0.0.1", "127.0.0.0/8", NULL);
	expect("::1", "127.0.0.0/8", "::1 is in ::1/128 (loopback)");
	expect("::ffff:127.0.0.1", "::ffff:0:0/96", "::ffff:127.0.0.1 is in 127.0.0.0/8 (loopback)");
	expect("64:ff9b::127.0.0.1", "::/0", "64:ff9b::7f00:1 is in 127.0.0.0/8 (loopback)");
	expect("10.0.0.1", "127.0.0.0/8", "10.0.0.1 is in 10.0.0.0/8 (private)");
	expect("10.1.2.3", "10.1.0.0/16, fd00::/8", NULL);
	expect("10.2.0.1", "10.1.0.0/16, fd00::/8", "10.2.0.1 is in 10.0.0.0/8 (private)");
	expect("fd12::1", "10.1.0.0/16,fd00::/8", NULL);
	expect("fc00::1", "10.1.0.0/16 fd00::/8", "fc00::1 is in fc00::/7 (unique local)");
	expect("192.168.1.10", "192.168.1.10", NULL);
	expect("192.168.1.11", "192.168.1.10", "192.168.1.11 is in 192.168.0.0/16 (private)");
	expect("172.20.0.1", "172.16.0.0/13", NULL);
	expect("172.24.0.1", "172.16.0.0/13", "172.24.0.1 is in 172.16.0.0/12 (private)");
	expect("::1", "::1", NULL);
	expect("169.254.169.254", "0.0.0.0/0", NULL);
	expect("fe80::1", "::/0", NULL);

	/* lists: what parses, what does not */
	ok(address_parse_list("", &ranges, &range_count, problem, sizeof(problem)) &&
	   range_count == 0 && ranges == NULL, "an empty list parses to no range%s%s", "", "");
	ok(address_parse_list(" 10.0.0.0/8 ,, fd00::/8\t", &ranges, &range_count, problem, sizeof(problem)) &&
	   range_count == 2 && ranges[0].prefix == 8 && ranges[1].family == AF_INET6,
	   "commas, spaces and tabs separate entries%s%s", "", "");
	free(ranges);
	{
		static const char *const bad[] = {
			"10.0.0.0/33", "fd00::/129", "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/+8",
			"10.0.0.0/8x", "10.0.0.0/0008", "10.0.0/8", "127.1", "localhost",
			"10.0.0.0/8/8", "0x7f.0.0.1", "2130706433", "[::1]", "::1%lo",
			"10.0.0.0/ 8", "1.2.3.4.5",
		};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		{
			char		list[128];
			bool		parsed;

			snprintf(list, sizeof(list), "10.0.0.0/8, %s", bad[i]);
			parsed = address_parse_list(list, &ranges, &range_count, problem, sizeof(problem));
			ok(!parsed && ranges == NULL && range_count == 0 && strstr(problem, "is not an address range") != NULL,
			   "\"%s\" is refused: %s", list, problem);
		}
	}
	ok(address_parse_cidr("10.0.0.0/0", &range) && range.prefix == 0,
	   "/0 is a valid prefix%s%s", "", "");
	ok(address_parse_cidr("2001:db8::1", &range) && range.prefix == 128,
	   "a bare IPv6 address is a /128%s%s", "", "");

	printf("1..%d\n", tests);
	return failures == 0 ? 0 : 1;
}
