/*-------------------------------------------------------------------------
 *
 * delivery.h
 *		One HTTP attempt of one (event, endpoint) pair, as the worker holds
 *		it from the moment queue.c fetches it until its outcome is recorded.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WEBHOOK_DELIVERY_H
#define WEBHOOK_DELIVERY_H

#include "lib/stringinfo.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include <curl/curl.h>

typedef enum DeliveryOutcome
{
	OUTCOME_SUCCEEDED,			/* 2xx */
	OUTCOME_RETRY,				/* try again at next_attempt_at */
	OUTCOME_FAILED,				/* retry schedule exhausted */
	OUTCOME_GONE				/* 410: disable the endpoint */
} DeliveryOutcome;

typedef struct Delivery
{
	/* what to send (filled by queue.c) */
	pg_uuid_t	event_id;
	pg_uuid_t	endpoint_id;
	int			attempt;		/* number of this attempt, from 1 */
	bool		manual;			/* asked for by retry_delivery or replay */
	int			manual_requests;	/* the row's count of them when fetched */
	char	   *tenant;			/* its endpoint's, NULL when none */
	int			rate_limit;		/* its endpoint's requests a second, 0: none */
	bool		ordered;		/* in an ordered sequence: the next waits for us */
	char	   *url;
	char	   *body;
	size_t		body_len;
	char	   *event_type;
	struct curl_slist *headers; /* endpoint's own headers; http.c adds ours */
	char	   *secret;
	char	   *previous_secret;	/* NULL unless within a rotation's grace */
	char	   *event_id_text;

	TimestampTz due_at;			/* its next_attempt_at when fetched */
	TimestampTz fetched_at;		/* when the worker took it (worker.c) */
	int64		busy_us_at_start;	/* the worker's time in transactions then */

	/* the transfer (http.c) */
	CURL	   *easy;
	TimestampTz started_at;
	StringInfoData response;	/* first webhook.max_response_body bytes */
	size_t		response_seen;	/* bytes received in all */
	bool		response_cut;	/* we stopped reading an endless body */
	bool		via_proxy;		/* connects to webhook.proxy, not the URL's host */
	char		blocked_reason[128];	/* set when address.c refused the peer */
	char		curl_error[CURL_ERROR_SIZE];

	/* what happened (http.c, then worker.c decides the outcome) */
	CURLcode	result;
	long		status_code;	/* 0 when no response */
	double		duration_ms;
	long		retry_after_s;	/* -1 when none given */
	char	   *error;			/* NULL when a response says it all */
	DeliveryOutcome outcome;
	TimestampTz next_attempt_at;
	bool		record_later;	/* its row was locked: record at a later pass */

	struct Delivery *next;		/* in the worker's completed list */
} Delivery;

/*
 * Where the worker is in one endpoint's queue: the last delivery it took,
 * in the order (next_attempt_at, event_id). See webhook.due_deliveries.
 */
typedef struct QueuePosition
{
	pg_uuid_t	endpoint_id;
	TimestampTz at;
	pg_uuid_t	event_id;
} QueuePosition;

/* A delivery by its key: (event, endpoint). */
typedef struct DeliveryKey
{
	pg_uuid_t	event_id;
	pg_uuid_t	endpoint_id;
} DeliveryKey;

/* What the worker finds in its database (queue_schema_state). */
typedef enum SchemaState
{
	SCHEMA_MISSING,				/* no CREATE EXTENSION yet */
	SCHEMA_OTHER_VERSION,		/* installed, but not this library's version */
	SCHEMA_READY
} SchemaState;

/*
 * Where retention's walk over the old history stands (see
 * webhook.remove_old_history_step): unset at the start of a walk.
 */
typedef struct RetentionPosition
{
	bool		set;
	TimestampTz at;
	pg_uuid_t	id;
} RetentionPosition;

/* queue.c: the worker's SQL, each call inside a transaction */
extern SchemaState queue_schema_state(char **version);
extern int64 queue_dispatch(int max_events, int *events);
extern int	queue_fetch(int limit, int per_endpoint, DeliveryKey *busy, int busy_count,
						QueuePosition *positions, int position_count,
						pg_uuid_t *blocked, int blocked_count,
						pg_uuid_t *probing, int probing_count,
						int worker_index, int worker_count,
						Delivery **fetched, MemoryContext context);
extern int	queue_record(Delivery **done, int count, bool history);
extern int64 queue_remove_old_history(int batch, RetentionPosition *position);
extern int	queue_disable_expired_endpoints(void);
extern int64 queue_start_waiting_sequences(void);
extern void queue_free_delivery(Delivery *delivery);

/* http.c: the libcurl multi pipeline */
extern void http_init(void);
extern void http_shutdown(void);
extern void http_apply_settings(void);
extern void http_start(Delivery *delivery);
extern void http_abandon(Delivery *delivery);
extern int	http_max_in_flight(void);
extern void http_limit_connections(int connections);
extern bool http_wait(long timeout_ms, uint32 wait_event_info);
extern Delivery *http_next_completed(void);

/* address.c: which peers a delivery may connect to */
extern bool address_allowed(const struct sockaddr *address, char *why, size_t why_size);
extern bool address_literal_allowed(const char *host, char *why, size_t why_size);

#endif							/* WEBHOOK_DELIVERY_H */
