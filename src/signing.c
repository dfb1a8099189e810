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

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "signing.h"

#define SIGNING_MAC_LENGTH 32
#define SIGNING_PREFIX "whsec_"
#define SIGNING_PREFIX_LENGTH 6

/*
 * Compute HMAC-SHA256 of data; errors only if OpenSSL itself fails.
 */
static void
signing_hmac(const unsigned char *key, size_t key_len,
			 const char *data, size_t data_len,
			 unsigned char mac[SIGNING_MAC_LENGTH])
{
	unsigned int mac_len = 0;

	if (HMAC(EVP_sha256(), key, (int) key_len, (const unsigned char *) data,
			 data_len, mac, &mac_len) == NULL || mac_len != SIGNING_MAC_LENGTH)
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

	signing_hmac((const unsigned char *) secret, secret_len, body, body_len, mac);
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
	StringInfoData message;
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

	initStringInfo(&message);
	appendStringInfo(&message, "%s." INT64_FORMAT ".", webhook_id, unix_timestamp);
	appendBinaryStringInfo(&message, body, (int) body_len);
	signing_hmac(key, key_len, message.data, message.len, mac);
	EVP_EncodeBlock((unsigned char *) encoded, mac, SIGNING_MAC_LENGTH);

	appendStringInfo(out, "v1,%s", encoded);
	pfree(message.data);
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
