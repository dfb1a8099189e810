/*-------------------------------------------------------------------------
 *
 * endpoints.c
 *		SQL-callable checks behind webhook.create_webhook and
 *		webhook.update_webhook, the masking of credentials in URLs, and
 *		secret generation.
 *
 * The endpoint functions themselves are SQL (webhook_outbox--0.1.sql); the
 * rules they enforce live here and in validate.c so that every entry point
 * reports the same error with the same SQLSTATE.
 *
 *-------------------------------------------------------------------------
 */
#include "webhook_outbox.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include <openssl/evp.h>

#include "delivery.h"
#include "validate.h"

#define ENDPOINTS_SECRET_BYTES 32
#define ENDPOINTS_DISPLAY_MAX 120
#define ENDPOINTS_MASK "********"	/* stands for a credential wherever shown */

/*
 * A user-supplied value as shown in an error message: control characters
 * escaped, so that a CR or LF cannot forge a line of the server log, and a
 * long value cut short (between characters, never inside one).
 */
char *
webhook_value_for_display(const char *value)
{
	StringInfoData shown;

	initStringInfo(&shown);
	for (const char *p = value; *p != '\0'; p += pg_mblen(p))
	{
		unsigned char c = (unsigned char) *p;

		if (shown.len >= ENDPOINTS_DISPLAY_MAX - 3)
		{
			appendStringInfoString(&shown, "...");
			break;
		}
		if (c == '\r')
			appendStringInfoString(&shown, "\\r");
		else if (c == '\n')
			appendStringInfoString(&shown, "\\n");
		else if (c == '\t')
			appendStringInfoString(&shown, "\\t");
		else if (c < 0x20 || c == 0x7f)
			appendStringInfo(&shown, "\\x%02x", c);
		else
			appendBinaryStringInfo(&shown, p, pg_mblen(p));
	}
	return shown.data;
}

/*
 * Where the authority of url starts: after "scheme:" and the slashes that
 * follow (two in a URL, but an invalid one shown in an error may have one
 * or none, as in "https:/user:password@host"); in a string that does not
 * start with a scheme, after its first "://", else after leading slashes.
 */
static const char *
endpoints_authority(const char *url)
{
	const char *p = url;
	const char *separator;

	if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z'))
	{
		p += strspn(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+.-");
		if (*p == ':')
			return p + 1 + strspn(p + 1, "/");
	}
	separator = strstr(url, "://");
	if (separator != NULL)
		return separator + 3;
	return url + strspn(url, "/");
}

/*
 * The URL with the credentials of its userinfo masked: "user:password"
 * becomes "user:********", a userinfo without a colon (a bare token used
 * as user name) becomes "********". The userinfo ends at the last '@'
 * before the path, query or fragment, so that a password holding an '@'
 * is masked whole. The one URL masker: errors and webhook.mask_url use it.
 */
static char *
endpoints_mask_url(const char *url)
{
	const char *authority = endpoints_authority(url);
	const char *end;
	const char *at = NULL;
	const char *colon;
	const char *kept_until;

	end = authority + strcspn(authority, "/?#");
	for (const char *p = authority; p < end; p++)
		if (*p == '@')
			at = p;
	if (at == NULL)
		return pstrdup(url);
	/* a user name has no colon: the first one starts the password */
	colon = memchr(authority, ':', at - authority);
	kept_until = (colon != NULL) ? colon + 1 : authority;
	return psprintf("%.*s%s%s", (int) (kept_until - url), url, ENDPOINTS_MASK, at);
}

/*
 * The URL as shown in an error: credentials masked, the rest as
 * webhook_value_for_display shows it.
 */
static char *
endpoints_url_for_display(const char *url)
{
	return webhook_value_for_display(endpoints_mask_url(url));
}

/*
 * Raise 22023 unless the header names seen so far, names[0..count], are
 * distinct ignoring case: HTTP header names are case-insensitive, and both
 * "X-A" and "x-a" would be sent. The names are valid tokens (ASCII).
 */
static void
endpoints_require_distinct_name(char **names, int count)
{
	for (int i = 0; i < count; i++)
		if (pg_strcasecmp(names[i], names[count]) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("webhook headers \"%s\" and \"%s\" differ only in case",
							webhook_value_for_display(names[i]),
							webhook_value_for_display(names[count])),
					 errdetail("Header names are case-insensitive: both headers would be sent."),
					 errhint("Keep one of them.")));
}

/*
 * Raise 22023 unless name is a valid event type name: dot-separated
 * lowercase words. Serves webhook.check_event_type_name and webhook.emit.
 */
void
webhook_require_event_type_name(const char *name)
{
	const char *problem = validate_event_type_name(name, strlen(name));

	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid event type name \"%s\"",
						webhook_value_for_display(name)),
				 errdetail("%s", problem)));
}

/*
 * webhook.check_url(url): raise 22023 unless url is an absolute http(s) URL
 * with a host, at most 1024 characters.
 */
PG_FUNCTION_INFO_V1(webhook_check_url);
Datum
webhook_check_url(PG_FUNCTION_ARGS)
{
	char	   *url = text_to_cstring(PG_GETARG_TEXT_PP(0));
	const char *problem = validate_url(url, strlen(url));

	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid webhook URL \"%s\"", endpoints_url_for_display(url)),
				 errdetail("%s", problem)));
	PG_RETURN_VOID();
}

/*
 * webhook.check_headers(headers): raise unless headers is a JSON object of
 * at most WEBHOOK_MAX_HEADERS non-empty string values, with valid,
 * non-reserved names distinct ignoring case, no control characters, and
 * at most WEBHOOK_MAX_HEADERS_SIZE bytes of names and values in all. No
 * error shows a value: it may be a credential.
 */
PG_FUNCTION_INFO_V1(webhook_check_headers);
Datum
webhook_check_headers(PG_FUNCTION_ARGS)
{
	Jsonb	   *headers = PG_GETARG_JSONB_P(0);
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken token;
	char	   *name = NULL;
	char	  **names;
	int			count;
	int			seen = 0;
	size_t		size = 0;

	if (!JB_ROOT_IS_OBJECT(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("webhook headers must be a JSON object"),
				 errhint("Pass headers such as '{\"Authorization\": \"Bearer ...\"}'.")));
	count = JB_ROOT_COUNT(headers);
	if (count > WEBHOOK_MAX_HEADERS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many webhook headers: %d", count),
				 errdetail("An endpoint has at most %d custom headers.",
						   WEBHOOK_MAX_HEADERS)));
	names = palloc(sizeof(char *) * Max(count, 1));

	it = JsonbIteratorInit(&headers->root);
	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		const char *problem;

		if (token == WJB_KEY)
		{
			name = webhook_value_for_display(pnstrdup(v.val.string.val,
													  v.val.string.len));
			problem = validate_header_name(v.val.string.val, v.val.string.len);
			if (problem != NULL)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid webhook header name \"%s\"", name),
						 errdetail("%s", problem)));
			names[seen] = pnstrdup(v.val.string.val, v.val.string.len);
			endpoints_require_distinct_name(names, seen);
			seen++;
			size += v.val.string.len;
		}
		else if (token == WJB_VALUE)
		{
			if (v.type != jbvString)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("value of webhook header \"%s\" must be a JSON string", name)));
			problem = validate_header_value(v.val.string.val, v.val.string.len);
			if (problem != NULL)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid value for webhook header \"%s\"", name),
						 errdetail("%s", problem)));
			size += v.val.string.len;
		}
	}
	if (size > WEBHOOK_MAX_HEADERS_SIZE)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("webhook headers are too large: %zu bytes", size),
				 errdetail("The names and values of an endpoint's custom headers have at most %d bytes in all.",
						   WEBHOOK_MAX_HEADERS_SIZE)));
	PG_RETURN_VOID();
}

/*
 * webhook.warn_blocked_url(url): a WARNING when the URL's host spells an
 * address that the SSRF guard, as now configured, refuses (127.0.0.1,
 * [::1], localhost, 10.0.0.5, ...): every delivery to it would fail, and
 * saying so when the endpoint is registered saves finding out from its
 * history. A host name is not resolved: that is judged at delivery.
 */
PG_FUNCTION_INFO_V1(webhook_warn_blocked_url);
Datum
webhook_warn_blocked_url(PG_FUNCTION_ARGS)
{
	char	   *url = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char		host[WEBHOOK_MAX_URL_LENGTH * 4 + 1];
	char		why[256];

	if (validate_url_host(url, host, sizeof(host)) &&
		!address_literal_allowed(host, why, sizeof(why)))
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("webhook URL \"%s\" points at a blocked address",
						endpoints_url_for_display(url)),
				 errdetail("%s: every delivery to it will fail with \"address blocked\".", why),
				 errhint("To deliver to it, add its range to webhook.allowed_networks in postgresql.conf, or, on a test server only, set webhook.allow_private_networks = on.")));
	PG_RETURN_VOID();
}

/*
 * webhook.mask_url(url): the URL as endpoints are listed, its credentials
 * masked as in errors.
 */
PG_FUNCTION_INFO_V1(webhook_mask_url);
Datum
webhook_mask_url(PG_FUNCTION_ARGS)
{
	char	   *url = text_to_cstring(PG_GETARG_TEXT_PP(0));

	PG_RETURN_TEXT_P(cstring_to_text(endpoints_mask_url(url)));
}

/*
 * webhook.check_secret(secret): raise unless it has 16 to 256 characters.
 * The value itself never appears in the error.
 */
PG_FUNCTION_INFO_V1(webhook_check_secret);
Datum
webhook_check_secret(PG_FUNCTION_ARGS)
{
	text	   *secret = PG_GETARG_TEXT_PP(0);
	int			length = pg_mbstrlen_with_len(VARDATA_ANY(secret),
											  VARSIZE_ANY_EXHDR(secret));

	if (length < WEBHOOK_MIN_SECRET_LENGTH || length > WEBHOOK_MAX_SECRET_LENGTH)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("webhook secret must have 16 to 256 characters, not %d", length),
				 errhint("Pass NULL to have a strong secret generated.")));
	PG_RETURN_VOID();
}

/*
 * webhook.check_event_type_name(name): raise unless name is dot-separated
 * lowercase words.
 */
PG_FUNCTION_INFO_V1(webhook_check_event_type_name);
Datum
webhook_check_event_type_name(PG_FUNCTION_ARGS)
{
	webhook_require_event_type_name(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/*
 * webhook.generate_secret(): "whsec_" + base64 of 32 strong random bytes.
 */
PG_FUNCTION_INFO_V1(webhook_generate_secret);
Datum
webhook_generate_secret(PG_FUNCTION_ARGS)
{
	unsigned char raw[ENDPOINTS_SECRET_BYTES];
	char		secret[6 + 4 * ((ENDPOINTS_SECRET_BYTES + 2) / 3) + 1];

	if (!pg_strong_random(raw, sizeof(raw)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random bytes for a webhook secret")));
	memcpy(secret, "whsec_", 6);
	EVP_EncodeBlock((unsigned char *) secret + 6, raw, sizeof(raw));
	explicit_bzero(raw, sizeof(raw));
	PG_RETURN_TEXT_P(cstring_to_text(secret));
}

/*
 * webhook.filter_matches(event_types, event_type): whether an endpoint's
 * filter lets an event type through. NULL or '{}' lets every event through
 * but the operational ones (prefix "webhook."); otherwise an element names
 * the type, or is a pattern "prefix.*" that every type starting with
 * "prefix." matches. NULL when nothing matched and the filter or the type
 * had a NULL, as the SQL expression it replaces.
 *
 * In C because dispatch asks it for every (event, endpoint): a SQL
 * function with a subquery (the pattern test) cannot be inlined, so it
 * would be planned at each dispatch pass and start an executor per call.
 * Byte comparisons: equality and prefixes of text under a deterministic
 * collation.
 */
PG_FUNCTION_INFO_V1(webhook_filter_matches);
Datum
webhook_filter_matches(PG_FUNCTION_ARGS)
{
	text	   *type;
	const char *type_data;
	int			type_len;
	ArrayType  *filter;
	Datum	   *elements;
	bool	   *nulls;
	int			count;
	bool		saw_null = false;

	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	type = PG_GETARG_TEXT_PP(1);
	type_data = VARDATA_ANY(type);
	type_len = VARSIZE_ANY_EXHDR(type);

	filter = PG_ARGISNULL(0) ? NULL : PG_GETARG_ARRAYTYPE_P(0);
	if (filter == NULL || ArrayGetNItems(ARR_NDIM(filter), ARR_DIMS(filter)) == 0)
		PG_RETURN_BOOL(!(type_len >= 8 && memcmp(type_data, "webhook.", 8) == 0));

	deconstruct_array(filter, TEXTOID, -1, false, TYPALIGN_INT, &elements, &nulls, &count);
	for (int i = 0; i < count; i++)
	{
		text	   *element;
		const char *data;
		int			len;

		if (nulls[i])
		{
			saw_null = true;
			continue;
		}
		element = DatumGetTextPP(elements[i]);
		data = VARDATA_ANY(element);
		len = VARSIZE_ANY_EXHDR(element);
		if (len == type_len && memcmp(data, type_data, len) == 0)
			PG_RETURN_BOOL(true);
		/* "prefix.*": the type starts with "prefix." */
		if (len >= 2 && data[len - 2] == '.' && data[len - 1] == '*' &&
			type_len >= len - 1 && memcmp(type_data, data, len - 1) == 0)
			PG_RETURN_BOOL(true);
	}
	if (saw_null)
		PG_RETURN_NULL();
	PG_RETURN_BOOL(false);
}
