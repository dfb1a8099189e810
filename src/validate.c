/*-------------------------------------------------------------------------
 *
 * validate.c
 *		Checks of endpoint URLs, custom headers and event type names.
 *
 * The URL is parsed by libcurl's own URL parser, the one that will parse it
 * again at delivery, so that what we accept is what curl understands.
 *
 *-------------------------------------------------------------------------
 */
#include "validate.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

/*
 * Headers the extension sets itself, or that only a transport may set.
 * (Proxy-* names are refused as a prefix, see validate_header_name.)
 */
static const char *const validate_reserved_headers[] = {
	"content-type", "user-agent", "host", "content-length",
	"connection", "keep-alive", "te", "trailer", "trailers",
	"transfer-encoding", "upgrade", "expect",
	NULL
};

/* Whether name[0..len) starts with prefix, ignoring ASCII case. */
static bool
validate_has_prefix(const char *name, size_t len, const char *prefix)
{
	size_t		prefix_len = strlen(prefix);

	return len >= prefix_len && strncasecmp(name, prefix, prefix_len) == 0;
}

/*
 * Whether the string holds a byte that has no place in a URL or header:
 * controls (CR, LF, NUL included) and DEL.
 */
static bool
validate_has_control(const char *s, size_t len, bool allow_tab)
{
	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (c == '\t' && allow_tab)
			continue;
		if (c < 0x20 || c == 0x7f)
			return true;
	}
	return false;
}

/*
 * How many characters s[0..len) holds: UTF-8 characters when it is valid
 * UTF-8 (as in a UTF8 database), else bytes (exact in single-byte
 * encodings, an over-count in other multibyte ones). Keeps limits stated
 * in characters true for non-ASCII text without knowing the encoding.
 */
static size_t
validate_character_count(const char *s, size_t len)
{
	size_t		count = 0;
	size_t		i = 0;

	while (i < len)
	{
		unsigned char c = (unsigned char) s[i];
		size_t		width;
		unsigned int code;

		if (c < 0x80)
		{
			count++;
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			width = 2;
		else if (c >= 0xe0 && c <= 0xef)
			width = 3;
		else if (c >= 0xf0 && c <= 0xf4)
			width = 4;
		else
			return len;			/* not UTF-8 */
		code = c & (0x7f >> width);	/* the lead byte's payload bits */
		if (i + width > len)
			return len;
		for (size_t k = 1; k < width; k++)
		{
			if (((unsigned char) s[i + k] & 0xc0) != 0x80)
				return len;
			code = (code << 6) | ((unsigned char) s[i + k] & 0x3f);
		}
		/* overlong forms, surrogates and code points past U+10FFFF */
		if ((width == 3 && code < 0x800) || (width == 4 && code < 0x10000) ||
			(code >= 0xd800 && code <= 0xdfff) || code > 0x10ffff)
			return len;
		count++;
		i += width;
	}
	return count;
}

/*
 * Check that the URL is an absolute http or https URL with a host.
 */
const char *
validate_url(const char *url, size_t len)
{
	CURLU	   *parsed;
	CURLUcode	rc;
	char	   *scheme = NULL;
	char	   *host = NULL;
	const char *problem = NULL;
	size_t		authority;

	if (len == 0)
		return "The URL is empty.";
	if (validate_character_count(url, len) > WEBHOOK_MAX_URL_LENGTH)
		return "A webhook URL has at most 1024 characters.";
	if (memchr(url, '\0', len) != NULL || validate_has_control(url, len, false))
		return "The URL contains a control character.";
	for (size_t i = 0; i < len; i++)
		if (url[i] == ' ')
			return "The URL contains a space.";
	if (len >= 7 && strncasecmp(url, "http://", 7) == 0)
		authority = 7;
	else if (len >= 8 && strncasecmp(url, "https://", 8) == 0)
		authority = 8;
	else
		return "Only absolute http:// and https:// URLs are accepted.";
	/* curl would read "https:///x" as the URL of host "x" */
	if (authority == len || strchr("/?#", url[authority]) != NULL)
		return "The URL has no host.";

	parsed = curl_url();
	if (parsed == NULL)
		return "Out of memory while parsing the URL.";
	/* url is NUL-terminated by the caller at len */
	rc = curl_url_set(parsed, CURLUPART_URL, url, 0);
	if (rc == CURLUE_NO_HOST)
		problem = "The URL has no host.";
	else if (rc != CURLUE_OK)
		problem = "The URL cannot be parsed.";
	else if (curl_url_get(parsed, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
			 (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0))
		problem = "Only absolute http:// and https:// URLs are accepted.";
	else if (curl_url_get(parsed, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
			 host[0] == '\0')
		problem = "The URL has no host.";

	curl_free(scheme);
	curl_free(host);
	curl_url_cleanup(parsed);
	return problem;
}

/*
 * The host of a URL that validate_url accepts, as curl parses it (an IPv6
 * literal without its brackets), into host; false when it does not fit or
 * the URL does not parse.
 */
bool
validate_url_host(const char *url, char *host, size_t host_size)
{
	CURLU	   *parsed = curl_url();
	char	   *parsed_host = NULL;
	bool		found = false;

	if (parsed == NULL)
		return false;
	if (curl_url_set(parsed, CURLUPART_URL, url, 0) == CURLUE_OK &&
		curl_url_get(parsed, CURLUPART_HOST, &parsed_host, 0) == CURLUE_OK)
	{
		const char *start = parsed_host;
		size_t		len = strlen(parsed_host);

		if (len >= 2 && parsed_host[0] == '[' && parsed_host[len - 1] == ']')
		{
			start++;
			len -= 2;
		}
		if (len < host_size)
		{
			memcpy(host, start, len);
			host[len] = '\0';
			found = true;
		}
	}
	curl_free(parsed_host);
	curl_url_cleanup(parsed);
	return found;
}

/*
 * Check a custom header's name: an HTTP token, not one the extension sets.
 */
const char *
validate_header_name(const char *name, size_t len)
{
	if (len == 0)
		return "A header name is empty.";
	if (len > WEBHOOK_MAX_HEADER_NAME_LENGTH)
		return "A header name has at most 256 characters.";
	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) name[i];

		/* strchr() finds the terminator too, so NUL is refused first */
		if (c == '\0' || !(isalnum(c) || strchr("!#$%&'*+-.^_`|~", c) != NULL))
			return "A header name may contain only letters, digits and !#$%&'*+-.^_`|~.";
	}
	for (const char *const *r = validate_reserved_headers; *r != NULL; r++)
		if (strlen(*r) == len && strncasecmp(name, *r, len) == 0)
			return "This header is set by webhook_outbox itself or by the HTTP transport.";
	if (validate_has_prefix(name, len, "x-webhook-") ||
		validate_has_prefix(name, len, "webhook-"))
		return "Headers named X-Webhook-* and webhook-* are set by webhook_outbox itself.";
	if (validate_has_prefix(name, len, "proxy-"))
		return "Headers named Proxy-* are meant for a proxy, not for the endpoint.";
	return NULL;
}

/*
 * Check a custom header's value: not empty or blank (libcurl reads
 * "Name:" with nothing after it as "do not send Name", which would remove a
 * header it sets itself), no CR, LF or other control characters.
 */
const char *
validate_header_value(const char *value, size_t len)
{
	size_t		blank = 0;

	while (blank < len && (value[blank] == ' ' || value[blank] == '\t'))
		blank++;
	if (blank == len)
		return "A header value must not be empty or blank: libcurl would remove the header instead of sending it.";
	if (validate_character_count(value, len) > WEBHOOK_MAX_HEADER_VALUE_LENGTH)
		return "A header value has at most 8192 characters.";
	if (memchr(value, '\0', len) != NULL || validate_has_control(value, len, true))
		return "A header value must not contain CR, LF or other control characters.";
	return NULL;
}

/*
 * Check an event type name: dot-separated lowercase words, e.g.
 * "journal_entry.posted".
 */
const char *
validate_event_type_name(const char *name, size_t len)
{
	size_t		word = 0;
	int			dots = 0;

	if (len == 0 || len > WEBHOOK_MAX_EVENT_TYPE_LENGTH)
		return "An event type name has 3 to 255 characters.";
	for (size_t i = 0; i < len; i++)
	{
		char		c = name[i];

		if (c == '.')
		{
			if (word == 0)
				return "Event type names are dot-separated lowercase words, such as \"journal_entry.posted\".";
			dots++;
			word = 0;
		}
		else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')
			word++;
		else
			return "Event type names are dot-separated lowercase words, such as \"journal_entry.posted\".";
	}
	if (word == 0 || dots == 0)
		return "Event type names are dot-separated lowercase words, such as \"journal_entry.posted\".";
	return NULL;
}
