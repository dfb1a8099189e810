/*-------------------------------------------------------------------------
 *
 * validate.h
 *		Checks of user-supplied endpoint settings: URL, custom headers,
 *		event type names. Plain C without backend calls, so that the fuzz
 *		target links them as they are.
 *
 * Each check returns NULL when the value is acceptable, or a sentence
 * saying what is wrong with it (a static string).
 *
 *-------------------------------------------------------------------------
 */
#ifndef WEBHOOK_VALIDATE_H
#define WEBHOOK_VALIDATE_H

#include <stdbool.h>
#include <stddef.h>

#define WEBHOOK_MAX_URL_LENGTH 1024
#define WEBHOOK_MIN_SECRET_LENGTH 16
#define WEBHOOK_MAX_SECRET_LENGTH 256
#define WEBHOOK_MAX_HEADER_NAME_LENGTH 256
#define WEBHOOK_MAX_HEADER_VALUE_LENGTH 8192
#define WEBHOOK_MAX_HEADERS 50			/* custom headers of one endpoint */
#define WEBHOOK_MAX_HEADERS_SIZE 65536	/* bytes of their names and values */
#define WEBHOOK_MAX_EVENT_TYPE_LENGTH 255

extern const char *validate_url(const char *url, size_t len);
extern bool validate_url_host(const char *url, char *host, size_t host_size);
extern const char *validate_header_name(const char *name, size_t len);
extern const char *validate_header_value(const char *value, size_t len);
extern const char *validate_event_type_name(const char *name, size_t len);

#endif							/* WEBHOOK_VALIDATE_H */
