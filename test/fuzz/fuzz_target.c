/*-------------------------------------------------------------------------
 *
 * fuzz_target.c
 *		libFuzzer target over the input checks of webhook_outbox: the
 *		endpoint checks of src/validate.c and the SSRF checks of
 *		src/address.c. Built and run by test/fuzz/run (`make fuzz`).
 *
 * The first byte of an input chooses the function, the rest is its
 * argument. Besides crashes and sanitizer reports, each function's answer
 * is checked against properties it must have (an accepted URL is short,
 * absolute http(s), free of control characters; an IPv4 address is judged
 * as its IPv4-mapped and NAT64 forms are; ...): a violation aborts.
 *
 *-------------------------------------------------------------------------
 */
#include "address.h"
#include "validate.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <locale.h>
#include <wchar.h>

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Abort with a message when a property does not hold. */
#define REQUIRE(condition) \
	do { \
		if (!(condition)) \
		{ \
			fprintf(stderr, "property violated: %s (%s:%d)\n", #condition, __FILE__, __LINE__); \
			abort(); \
		} \
	} while (0)

/* Whether s[0..len) holds a control character other than, if allowed, tab. */
static bool
has_control(const char *s, size_t len, bool tab_allowed)
{
	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if ((c < 0x20 && !(tab_allowed && c == '\t')) || c == 0x7f)
			return true;
	}
	return false;
}

/*
 * Characters in s: code points if it is valid UTF-8, else bytes. An
 * independent version of validate.c's count: mbrtowc in a UTF-8 locale.
 */
static size_t
utf8_or_bytes_count(const char *s, size_t len)
{
	mbstate_t	state;
	size_t		count = 0;
	size_t		i = 0;

	memset(&state, 0, sizeof(state));
	while (i < len)
	{
		wchar_t		wc;
		size_t		n = mbrtowc(&wc, s + i, len - i, &state);

		if (n == (size_t) -1 || n == (size_t) -2)
			return len;
		if (n == 0)
			n = 1;				/* an embedded NUL */
		count++;
		i += n;
	}
	return count;
}

static void
fuzz_url(const char *s, size_t len)
{
	if (validate_url(s, len) != NULL)
		return;
	/* at most 1024 characters: 4 bytes each at most, in UTF-8 */
	REQUIRE(len > 0 && len <= 4 * WEBHOOK_MAX_URL_LENGTH);
	REQUIRE(utf8_or_bytes_count(s, len) <= WEBHOOK_MAX_URL_LENGTH);
	REQUIRE(!has_control(s, len, false) && memchr(s, ' ', len) == NULL);
	REQUIRE(strncasecmp(s, "http://", 7) == 0 || strncasecmp(s, "https://", 8) == 0);
}

static void
fuzz_header_name(const char *s, size_t len)
{
	if (validate_header_name(s, len) != NULL)
		return;
	REQUIRE(len > 0 && len <= WEBHOOK_MAX_HEADER_NAME_LENGTH);
	for (size_t i = 0; i < len; i++)
		REQUIRE(s[i] != '\0' && s[i] != ':' && s[i] != ' ' && !has_control(s + i, 1, false) &&
				(unsigned char) s[i] < 0x80);
	REQUIRE(!(len >= 8 && strncasecmp(s, "webhook-", 8) == 0));
	REQUIRE(!(len >= 6 && strncasecmp(s, "proxy-", 6) == 0));
	REQUIRE(!(len == 4 && strncasecmp(s, "host", 4) == 0));
}

static void
fuzz_header_value(const char *s, size_t len)
{
	if (validate_header_value(s, len) != NULL)
		return;
	REQUIRE(len <= 4 * WEBHOOK_MAX_HEADER_VALUE_LENGTH);
	REQUIRE(utf8_or_bytes_count(s, len) <= WEBHOOK_MAX_HEADER_VALUE_LENGTH);
	REQUIRE(!has_control(s, len, true) && memchr(s, '\0', len) == NULL);
	/* not empty or blank: libcurl would remove the header instead */
	REQUIRE(strspn(s, " \t") < len);
}

static void
fuzz_event_type_name(const char *s, size_t len)
{
	if (validate_event_type_name(s, len) != NULL)
		return;
	/* [a-z0-9_]+(\.[a-z0-9_]+)+ */
	REQUIRE(len >= 3 && len <= WEBHOOK_MAX_EVENT_TYPE_LENGTH);
	REQUIRE(s[0] != '.' && s[len - 1] != '.' && memchr(s, '.', len) != NULL);
	for (size_t i = 0; i < len; i++)
	{
		REQUIRE((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') ||
				s[i] == '_' || s[i] == '.');
		REQUIRE(!(s[i] == '.' && i + 1 < len && s[i + 1] == '.'));
	}
}

static void
fuzz_parse_list(const char *s)
{
	AddressRange *ranges;
	int			count;
	char		problem[256];
	char		why[128];

	if (!address_parse_list(s, &ranges, &count, problem, sizeof(problem)))
	{
		REQUIRE(ranges == NULL && count == 0 && problem[0] != '\0');
		return;
	}
	for (int i = 0; i < count; i++)
	{
		REQUIRE(ranges[i].family == AF_INET || ranges[i].family == AF_INET6);
		REQUIRE(ranges[i].prefix >= 0 &&
				ranges[i].prefix <= (ranges[i].family == AF_INET ? 32 : 128));
		/* a listed range opens its own network address */
		REQUIRE(address_check(ranges[i].family, ranges[i].bytes, false,
							  ranges, count, why, sizeof(why)));
	}
	free(ranges);
}

/*
 * 1 byte family, 16 bytes of address, then an allowed list; size counts
 * the NUL that the caller put after the data.
 */
static void
fuzz_check(const uint8_t *data, size_t size)
{
	unsigned char address[16];
	int			family;
	AddressRange *allowed = NULL;
	int			allowed_count = 0;
	char		problem[256];
	char		why[128] = "";
	char		shown[INET6_ADDRSTRLEN];
	bool		verdict;

	if (size < 18)
		return;
	family = (data[0] & 1) ? AF_INET6 : AF_INET;
	memcpy(address, data + 1, 16);
	if (!address_parse_list((const char *) data + 17, &allowed, &allowed_count,
							problem, sizeof(problem)))
		allowed_count = 0;

	verdict = address_check(family, address, false, allowed, allowed_count, why, sizeof(why));
	if (!verdict)
	{
		/* the reason starts with the address as inet_ntop shows it */
		inet_ntop(family, address, shown, sizeof(shown));
		REQUIRE(strncmp(why, shown, strlen(shown)) == 0 && strstr(why, " is in ") != NULL);
	}
	REQUIRE(address_check(family, address, true, allowed, allowed_count, why, sizeof(why)));

	if (family == AF_INET)
	{
		/* ::ffff:a.b.c.d and 64:ff9b::a.b.c.d are judged as a.b.c.d */
		unsigned char mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
		unsigned char nat64[16] = {0x00, 0x64, 0xff, 0x9b};

		memcpy(mapped + 12, address, 4);
		memcpy(nat64 + 12, address, 4);
		REQUIRE(address_check(AF_INET6, mapped, false, allowed, allowed_count, why, sizeof(why)) == verdict);
		REQUIRE(address_check(AF_INET6, nat64, false, allowed, allowed_count, why, sizeof(why)) == verdict);

		/* what no list opens: the known-bad ranges stay blocked without one */
		if (address[0] == 127 || address[0] == 10 ||
			(address[0] == 169 && address[1] == 254) ||
			(address[0] == 192 && address[1] == 168))
			REQUIRE(!address_check(AF_INET, address, false, NULL, 0, why, sizeof(why)));
	}
	else if (memcmp(address, (unsigned char[16]) {0}, 15) == 0 && address[15] <= 1)
		REQUIRE(!address_check(AF_INET6, address, false, NULL, 0, why, sizeof(why)));
	free(allowed);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool locale_set = false;
	char	   *copy;
	size_t		len;

	if (size < 1)
		return 0;
	if (!locale_set)
	{
		if (setlocale(LC_CTYPE, "C.UTF-8") == NULL)
			abort();			/* utf8_or_bytes_count needs it */
		locale_set = true;
	}
	len = size - 1;
	/* every function gets a NUL-terminated copy, as its callers pass */
	copy = malloc(len + 1);
	if (copy == NULL)
		return 0;
	memcpy(copy, data + 1, len);
	copy[len] = '\0';

	switch (data[0] % 6)
	{
		case 0:
			fuzz_url(copy, len);
			break;
		case 1:
			fuzz_header_name(copy, len);
			break;
		case 2:
			fuzz_header_value(copy, len);
			break;
		case 3:
			fuzz_event_type_name(copy, len);
			break;
		case 4:
			fuzz_parse_list(copy);
			break;
		case 5:
			fuzz_check((const uint8_t *) copy, len + 1);
			break;
	}
	free(copy);
	return 0;
}
