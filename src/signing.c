/*-------------------------------------------------------------------------
 *
 * signing.c
 *		Where a delivery is signed: HMAC-SHA256 with OpenSSL.
 *
 * Two schemes go out on every delivery:
 *   X-Webhook-Signature: sha256=<hex>   over the raw body, keyed by the
 *                                       secret's bytes as stored;
 *   webhook-signature:   v1,<base64>    over "<id>.<timestamp>.<body>"
 *                                       (Standard Webhooks), keyed by the
 *                                       base64-decoded part after "whsec_"
 *                                       when the secret has that form.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/base64.h"
#include "fmgr.h"
#include "utils/builtins.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>

#include "signing.h"

#define SIGNING_MAC_LENGTH 32
#define SIGNING_PREFIX "whsec_"
#define SIGNING_PREFIX_LENGTH 6

/*
 * One HMAC-SHA256 context, fetched once and keyed again for each message:
 * OpenSSL 3's one-shot HMAC() looks the algorithm up by name at every call,
 * a third of its cost for a delivery-sized body.
 */
static EVP_MAC_CTX *
signing_context(void)
{
	static EVP_MAC_CTX *context = NULL;

	if (context == NULL)
	{
		EVP_MAC   *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
		EVP_MAC_CTX *made = mac ? EVP_MAC_CTX_new(mac) : NULL;
		OSSL_PARAM	params[2] = {
			OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
			OSSL_PARAM_construct_end()
		};

		EVP_MAC_free(mac);		/* the context keeps its own reference */
		if (made == NULL || EVP_MAC_CTX_set_params(made, params) != 1)
		{
			EVP_MAC_CTX_free(made);
			elog(ERROR, "HMAC-SHA256 is not available from OpenSSL");
		}
		context = made;
	}
	return context;
}

/*
 * HMAC-SHA256 of the concatenation of count parts, keyed by key (never
 * NULL: OpenSSL would then reuse the previous message's key); errors only
 * if OpenSSL itself fails.
 */
static void
signing_hmac(const unsigned char *key, size_t key_len, int count,
			 const char *const *parts, const size_t *lengths,
			 unsigned char mac[SIGNING_MAC_LENGTH])
{
	EVP_MAC_CTX *context = signing_context();
	size_t		mac_len = 0;
	bool		ok;

	ok = EVP_MAC_init(context, key ? key : (const unsigned char *) "", key_len, NULL) == 1;
	for (int i = 0; ok && i < count; i++)
		ok = EVP_MAC_update(context, (const unsigned char *) parts[i], lengths[i]) == 1;
	if (!ok || EVP_MAC_final(context, mac, &mac_len, SIGNING_MAC_LENGTH) != 1 ||
		mac_len != SIGNING_MAC_LENGTH)
		elog(ERROR, "HMAC-SHA256 computation failed");
}

/*
 * "sha256=" followed by the lowercase hex HMAC of the body.
 */
void
signing_hex(const char *secret, size_t secret_len,
			const char *body, size_t body_len, char out[SIGNING_HEX_LENGTH])
{
	static const char digits[] = "0123456789abcdef";
	unsigned char mac[SIGNING_MAC_LENGTH];

	signing_hmac((const unsigned char *) secret, secret_len, 1, &body, &body_len, mac);
	memcpy(out, "sha256=", 7);
	for (int i = 0; i < SIGNING_MAC_LENGTH; i++)
	{
		out[7 + 2 * i] = digits[mac[i] >> 4];
		out[7 + 2 * i + 1] = digits[mac[i] & 0x0f];
	}
	out[SIGNING_HEX_LENGTH - 1] = '\0';
}

/*
 * Append "v1,<base64 HMAC>" of "<id>.<timestamp>.<body>" to out.
 */
void
signing_standard(const char *secret, size_t secret_len,
				 const char *webhook_id, int64 unix_timestamp,
				 const char *body, size_t body_len, StringInfo out)
{
	const unsigned char *key = (const unsigned char *) secret;
	size_t		key_len = secret_len;
	char	   *decoded = NULL;
	char		timestamp[32];
	const char *parts[3];
	size_t		lengths[3];
	unsigned char mac[SIGNING_MAC_LENGTH];
	char		encoded[64];

	if (secret_len > SIGNING_PREFIX_LENGTH &&
		memcmp(secret, SIGNING_PREFIX, SIGNING_PREFIX_LENGTH) == 0)
	{
		const char *b64 = secret + SIGNING_PREFIX_LENGTH;
		int			b64_len = (int) (secret_len - SIGNING_PREFIX_LENGTH);
		int			decoded_len;

		decoded = palloc(pg_b64_dec_len(b64_len) + 1);
		decoded_len = pg_b64_decode(b64, b64_len, decoded, pg_b64_dec_len(b64_len));
		/* Not base64 after all: the contract says to use the bytes as stored. */
		if (decoded_len > 0)
		{
			key = (const unsigned char *) decoded;
			key_len = decoded_len;
		}
	}

	/* "<id>.<timestamp>.<body>", without copying the body */
	snprintf(timestamp, sizeof(timestamp), "." INT64_FORMAT ".", unix_timestamp);
	parts[0] = webhook_id;
	lengths[0] = strlen(webhook_id);
	parts[1] = timestamp;
	lengths[1] = strlen(timestamp);
	parts[2] = body;
	lengths[2] = body_len;
	signing_hmac(key, key_len, 3, parts, lengths, mac);
	EVP_EncodeBlock((unsigned char *) encoded, mac, SIGNING_MAC_LENGTH);

	appendStringInfo(out, "v1,%s", encoded);
	if (decoded)
		pfree(decoded);
}

/*
 * webhook.sign(secret, webhook_id, unix_timestamp, body): the Standard
 * Webhooks signature the worker would send.
 */
PG_FUNCTION_INFO_V1(webhook_sign);
Datum
webhook_sign(PG_FUNCTION_ARGS)
{
	text	   *secret = PG_GETARG_TEXT_PP(0);
	char	   *webhook_id = text_to_cstring(PG_GETARG_TEXT_PP(1));
	int64		unix_timestamp = PG_GETARG_INT64(2);
	text	   *body = PG_GETARG_TEXT_PP(3);
	StringInfoData out;

	initStringInfo(&out);
	signing_standard(VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret),
					 webhook_id, unix_timestamp,
					 VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), &out);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(out.data, out.len));
}

/*
 * webhook.sign_hex(secret, body): the X-Webhook-Signature header value.
 */
PG_FUNCTION_INFO_V1(webhook_sign_hex);
Datum
webhook_sign_hex(PG_FUNCTION_ARGS)
{
	text	   *secret = PG_GETARG_TEXT_PP(0);
	text	   *body = PG_GETARG_TEXT_PP(1);
	char		out[SIGNING_HEX_LENGTH];

	signing_hex(VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret),
				VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), out);
	PG_RETURN_TEXT_P(cstring_to_text(out));
}
