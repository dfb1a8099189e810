/*-------------------------------------------------------------------------
 *
 * signing.h
 *		HMAC-SHA256 signatures of deliveries.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WEBHOOK_SIGNING_H
#define WEBHOOK_SIGNING_H

#include "lib/stringinfo.h"

/* "sha256=" + 64 hex digits + NUL */
#define SIGNING_HEX_LENGTH (7 + 64 + 1)

extern void signing_hex(const char *secret, size_t secret_len,
						const char *body, size_t body_len,
						char out[SIGNING_HEX_LENGTH]);
extern void signing_standard(const char *secret, size_t secret_len,
							 const char *webhook_id, int64 unix_timestamp,
							 const char *body, size_t body_len,
							 StringInfo out);

#endif							/* WEBHOOK_SIGNING_H */
