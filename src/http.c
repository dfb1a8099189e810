/*-------------------------------------------------------------------------
 *
 * http.c
 *		HTTP delivery: libcurl's multi interface driven from one
 *		WaitEventSet that also holds the worker's latch.
 *
 * Requests run concurrently up to webhook.concurrency; as each completes
 * the worker fetches the next (no batch barrier). curl tells us which
 * sockets to watch (socket callback) and when to call it back (timer
 * callback); the wait set is rebuilt only when a socket comes or goes, and
 * merely modified when curl wants another direction on a socket, so kept-
 * alive connections cost no set-up per request.
 *
 * Every request: POST, http/https only, redirects never followed, TLS
 * verified, proxies only from webhook.proxy (never from the environment),
 * each peer address checked by address.c at connect time (the address
 * checked is the one connected to). A configured proxy is the operator's
 * choice and is connected to whatever its address; it then decides where
 * requests may go. When those settings change, connections opened under
 * the old ones are not reused.
 *
 *-------------------------------------------------------------------------
 */
#include "webhook_outbox.h"

#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/memutils.h"

#include <sys/resource.h>
#include <sys/socket.h>

#include "delivery.h"
#include "signing.h"

#if LIBCURL_VERSION_NUM < 0x074200
#error "webhook_outbox needs libcurl 7.66 or later (CURLINFO_RETRY_AFTER)"
#endif

/* We read at most this much of any response, then hang up. */
#define HTTP_MAX_RESPONSE_READ (1024 * 1024)

typedef struct HttpSocket
{
	curl_socket_t fd;
	uint32		events;			/* WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE */
	int			position;		/* in the wait set, -1 if not yet there */
	bool		modified;
} HttpSocket;

static CURLM *http_multi = NULL;
static int	http_request_limit = 64;	/* webhook.concurrency, bounded by files */
static long http_connection_limit = 0;	/* as last given to curl */
static long http_timer_ms = -1;	/* what curl last asked for; -1 = none */
static TimestampTz http_timer_set_at = 0;

static HttpSocket *http_sockets = NULL;
static int	http_socket_count = 0;
static int	http_socket_capacity = 0;
static bool http_sockets_restructured = true;

static WaitEventSet *http_wait_set = NULL;
static int	http_wait_set_capacity = 0;

/* When the settings that decide where we may connect last changed */
static char *http_peer_settings = NULL;
static TimestampTz http_peer_settings_changed_at = 0;

static CURL **http_spare_handles = NULL;	/* easy handles ready for reuse */
static int	http_spare_count = 0;
static int	http_spare_capacity = 0;

/*
 * Grow an array kept for the worker's lifetime.
 */
static void *
http_grow(void *array, Size size)
{
	if (array == NULL)
		return MemoryContextAlloc(TopMemoryContext, size);
	return repalloc(array, size);
}

/*
 * Find a watched socket, or -1.
 */
static int
http_socket_index(curl_socket_t fd)
{
	for (int i = 0; i < http_socket_count; i++)
		if (http_sockets[i].fd == fd)
			return i;
	return -1;
}

/*
 * curl's socket callback: start, change or stop watching a socket.
 */
static int
http_socket_callback(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	int			i = http_socket_index(fd);
	uint32		events = 0;


	if (what == CURL_POLL_REMOVE)
	{
		if (i >= 0)
		{
			http_sockets[i] = http_sockets[--http_socket_count];
			http_sockets_restructured = true;
		}
		return 0;
	}
	if (what & CURL_POLL_IN)
		events |= WL_SOCKET_READABLE;
	if (what & CURL_POLL_OUT)
		events |= WL_SOCKET_WRITEABLE;

	if (i < 0)
	{
		if (http_socket_count == http_socket_capacity)
		{
			http_socket_capacity = Max(16, http_socket_capacity * 2);
			http_sockets = http_grow(http_sockets,
												  http_socket_capacity * sizeof(HttpSocket));
		}
		i = http_socket_count++;
		http_sockets[i].fd = fd;
		http_sockets[i].position = -1;
		http_sockets_restructured = true;
	}
	else if (http_sockets[i].events != events)
		http_sockets[i].modified = true;
	http_sockets[i].events = events;
	return 0;
}

/*
 * curl's timer callback: remember when curl wants to be called back.
 */
static int
http_timer_callback(CURLM *multi, long timeout_ms, void *userp)
{
	http_timer_ms = timeout_ms;
	http_timer_set_at = GetCurrentTimestamp();
	return 0;
}

/*
 * Keep the first webhook.max_response_body bytes of a response; hang up on
 * one that goes on past HTTP_MAX_RESPONSE_READ.
 */
static size_t
http_write_callback(char *data, size_t size, size_t count, void *userp)
{
	Delivery   *delivery = (Delivery *) userp;
	size_t		bytes = size * count;
	size_t		room;

	if (delivery->response.len < webhook_max_response_body)
	{
		room = webhook_max_response_body - delivery->response.len;
		appendBinaryStringInfo(&delivery->response, data, (int) Min(room, bytes));
	}
	delivery->response_seen += bytes;
	if (delivery->response_seen > HTTP_MAX_RESPONSE_READ)
	{
		delivery->response_cut = true;
		return 0;				/* CURLE_WRITE_ERROR: stop reading */
	}
	return bytes;
}

/*
 * curl's open-socket callback: refuse peers address.c does not allow. This
 * runs on the address curl is about to connect to, after its own lookup,
 * so a name cannot resolve differently between check and use.
 */
static curl_socket_t
http_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	Delivery   *delivery = (Delivery *) clientp;

	if (!delivery->via_proxy &&
		!address_allowed(&address->addr, delivery->blocked_reason,
						 sizeof(delivery->blocked_reason)))
		return CURL_SOCKET_BAD;
	return socket(address->family, address->socktype, address->protocol);
}

/*
 * Note when the parameters that decide where deliveries may connect change
 * (at a reload), so that http_start stops reusing connections opened
 * before: one kept alive to a loopback address while private networks were
 * allowed must not carry requests once they are not.
 */
static void
http_note_peer_settings(void)
{
	char	   *settings = psprintf("%d|%s|%s|%s", webhook_allow_private_networks,
									webhook_allowed_networks, webhook_proxy,
									webhook_ca_file);

	if (http_peer_settings != NULL && strcmp(http_peer_settings, settings) != 0)
		http_peer_settings_changed_at = GetCurrentTimestamp();
	if (http_peer_settings == NULL || strcmp(http_peer_settings, settings) != 0)
	{
		if (http_peer_settings != NULL)
			pfree(http_peer_settings);
		http_peer_settings = MemoryContextStrdup(TopMemoryContext, settings);
	}
	pfree(settings);
}

/*
 * Keep this request off connections opened before the last change of the
 * peer settings: curl reuses only connections younger than the time since.
 */
static void
http_avoid_stale_connections(CURL *easy)
{
	long		since_s;

	if (http_peer_settings_changed_at == 0)
		return;
	since_s = (long) ((GetCurrentTimestamp() - http_peer_settings_changed_at) / USECS_PER_SEC);
#if LIBCURL_VERSION_NUM >= 0x075000
	if (since_s >= 1)
	{
		curl_easy_setopt(easy, CURLOPT_MAXLIFETIME_CONN, since_s);
		return;
	}
#else
	/* older connections are idle from now on: curl drops them in 118 s */
	if (since_s >= 120)
		return;
#endif
	curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
}

/*
 * Set the multi handle's limits from the parameters, bounded by how many
 * files this process may open.
 */
void
http_apply_settings(void)
{
	struct rlimit limit;
	long		requests = webhook_concurrency;

	/* At most twice this many sockets (see http_max_in_flight) */
	if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY)
		requests = Min(requests, Max(1, (long) limit.rlim_cur / 4 - 16));
	http_request_limit = (int) requests;

	http_limit_connections(requests);
	curl_multi_setopt(http_multi, CURLMOPT_MAXCONNECTS, requests);

	/*
	 * No per-host limit in curl: webhook.endpoint_concurrency is enforced
	 * per endpoint when deliveries are fetched, and endpoints often share a
	 * host (hooks.slack.com, ...). A per-host limit here would queue a
	 * healthy endpoint's requests behind a hanging one's on the same host.
	 */

	http_note_peer_settings();
}

/*
 * Create the multi handle (once per worker).
 */
void
http_init(void)
{
	if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not initialize libcurl")));
	http_multi = curl_multi_init();
	if (http_multi == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl multi handle")));
	curl_multi_setopt(http_multi, CURLMOPT_SOCKETFUNCTION, http_socket_callback);
	curl_multi_setopt(http_multi, CURLMOPT_TIMERFUNCTION, http_timer_callback);
	http_apply_settings();
}

/*
 * Release curl's resources at worker exit.
 */
void
http_shutdown(void)
{
	if (http_multi == NULL)
		return;
	for (int i = 0; i < http_spare_count; i++)
		curl_easy_cleanup(http_spare_handles[i]);
	http_spare_count = 0;
	curl_multi_cleanup(http_multi);
	http_multi = NULL;
}

/*
 * Append one "Name: value" header.
 */
static void
http_add_header(Delivery *delivery, const char *format,...)
{
	char		line[1024];
	va_list		args;
	struct curl_slist *list;

	va_start(args, format);
	vsnprintf(line, sizeof(line), format, args);
	va_end(args);
	list = curl_slist_append(delivery->headers, line);
	if (list == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	delivery->headers = list;
}

/*
 * Sign the delivery and hand it to curl.
 */
void
http_start(Delivery *delivery)
{
	CURL	   *easy;
	int64		unix_now;
	char		hex[SIGNING_HEX_LENGTH];
	StringInfoData signatures;
	CURLMcode	rc;
	MemoryContext caller = MemoryContextSwitchTo(GetMemoryChunkContext(delivery));

	delivery->started_at = GetCurrentTimestamp();
	unix_now = (int64) time(NULL);
	initStringInfo(&delivery->response);
	delivery->response_seen = 0;
	delivery->response_cut = false;
	delivery->curl_error[0] = '\0';
	delivery->blocked_reason[0] = '\0';
	delivery->via_proxy = (webhook_proxy[0] != '\0');
	delivery->retry_after_s = -1;
	delivery->status_code = 0;

	/*
	 * Our headers follow the endpoint's own (already in the list), which can
	 * never name these: validate.c sees to that.
	 */
	signing_hex(delivery->secret, strlen(delivery->secret),
				delivery->body, delivery->body_len, hex);
	initStringInfo(&signatures);
	signing_standard(delivery->secret, strlen(delivery->secret),
					 delivery->event_id_text, unix_now,
					 delivery->body, delivery->body_len, &signatures);
	if (delivery->previous_secret != NULL)
	{
		appendStringInfoChar(&signatures, ' ');
		signing_standard(delivery->previous_secret, strlen(delivery->previous_secret),
						 delivery->event_id_text, unix_now,
						 delivery->body, delivery->body_len, &signatures);
	}
	http_add_header(delivery, "Content-Type: application/json");
	http_add_header(delivery, "X-Webhook-Event: %s", delivery->event_type);
	http_add_header(delivery, "X-Webhook-Signature: %s", hex);
	http_add_header(delivery, "webhook-id: %s", delivery->event_id_text);
	http_add_header(delivery, "webhook-timestamp: " INT64_FORMAT, unix_now);
	http_add_header(delivery, "webhook-signature: %s", signatures.data);
	http_add_header(delivery, "Expect:");	/* no 100-continue round trip */
	pfree(signatures.data);

	if (http_spare_count > 0)
		easy = http_spare_handles[--http_spare_count];
	else if ((easy = curl_easy_init()) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl handle")));
	delivery->easy = easy;

	/* Fault injection for the tests (webhook.test_fail_start_url). */
	if (webhook_test_fail_start_url[0] != '\0' &&
		strstr(delivery->url, webhook_test_fail_start_url) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not start a delivery: injected fault")));

	curl_easy_setopt(easy, CURLOPT_URL, delivery->url);
	curl_easy_setopt(easy, CURLOPT_POST, 1L);
	curl_easy_setopt(easy, CURLOPT_POSTFIELDS, delivery->body);
	curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) delivery->body_len);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, delivery->headers);
	curl_easy_setopt(easy, CURLOPT_USERAGENT, WEBHOOK_USER_AGENT);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) webhook_timeout_ms);
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	/*
	 * An empty proxy disables the *_proxy environment variables; an empty
	 * no-proxy list disables NO_PROXY, so that a configured proxy carries
	 * every request.
	 */
	curl_easy_setopt(easy, CURLOPT_PROXY, webhook_proxy);
	curl_easy_setopt(easy, CURLOPT_NOPROXY, "");
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
	if (webhook_ca_file[0] != '\0')
		curl_easy_setopt(easy, CURLOPT_CAINFO, webhook_ca_file);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, http_write_callback);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, delivery);
	curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, http_open_socket);
	curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, delivery);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, delivery->curl_error);
	curl_easy_setopt(easy, CURLOPT_PRIVATE, delivery);
	http_avoid_stale_connections(easy);

	rc = curl_multi_add_handle(http_multi, easy);
	if (rc != CURLM_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not start a delivery: %s", curl_multi_strerror(rc))));
	MemoryContextSwitchTo(caller);
}

/*
 * Let go of a delivery whose start failed half-way: its handle is not
 * reused (its state is unknown), its headers are freed.
 */
void
http_abandon(Delivery *delivery)
{
	if (delivery->easy != NULL)
	{
		curl_multi_remove_handle(http_multi, delivery->easy);
		curl_easy_cleanup(delivery->easy);
		delivery->easy = NULL;
	}
	if (delivery->headers != NULL)
	{
		curl_slist_free_all(delivery->headers);
		delivery->headers = NULL;
	}
}

/*
 * webhook.concurrency as this process can honour it: requests that are
 * being answered at once. The worker lets as many again wait on stalled
 * receivers (worker.c), so sockets stay under twice this, within the
 * open-file limit.
 */
int
http_max_in_flight(void)
{
	return http_request_limit;
}

/*
 * Let curl hold at most this many connections, in use or idle: the
 * requests the worker lets be in flight now (webhook.concurrency, plus the
 * stalled ones it no longer counts). When a request needs a connection to
 * another host and none is free, curl closes the oldest idle one, so
 * connections kept for reuse never push the worker past its limit.
 */
void
http_limit_connections(int connections)
{
	long		limit = Max(1, Min(connections, 2 * http_request_limit));

	if (limit == http_connection_limit)
		return;
	curl_multi_setopt(http_multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, limit);
	http_connection_limit = limit;
}

/*
 * Bring the wait set in line with the sockets curl wants watched.
 */
static void
http_prepare_wait_set(void)
{
	if (http_sockets_restructured || http_wait_set == NULL ||
		http_wait_set_capacity < http_socket_count + 2)
	{
		if (http_wait_set != NULL)
			FreeWaitEventSet(http_wait_set);
		http_wait_set_capacity = Max(http_wait_set_capacity, http_socket_count + 2);
		http_wait_set = CreateWaitEventSet(TopMemoryContext, http_wait_set_capacity);
		AddWaitEventToSet(http_wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(http_wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
		for (int i = 0; i < http_socket_count; i++)
		{
			http_sockets[i].position =
				AddWaitEventToSet(http_wait_set, http_sockets[i].events,
								  http_sockets[i].fd, NULL, NULL);
			http_sockets[i].modified = false;
		}
		http_sockets_restructured = false;
		return;
	}
	for (int i = 0; i < http_socket_count; i++)
		if (http_sockets[i].modified)
		{
			ModifyWaitEvent(http_wait_set, http_sockets[i].position,
							http_sockets[i].events, NULL);
			http_sockets[i].modified = false;
		}
}

/*
 * Sleep until the latch is set, a socket is ready, curl's timer or
 * timeout_ms expires; let curl do its work. Returns true if the latch woke us.
 */
bool
http_wait(long timeout_ms, uint32 wait_event_info)
{
	WaitEvent	events[64];
	int			count;
	int			running;		/* curl's count; worker.c keeps its own */
	bool		latch_set = false;

	if (http_timer_ms >= 0)
	{
		long		elapsed = (long) ((GetCurrentTimestamp() - http_timer_set_at) / 1000);
		long		left = Max(0, http_timer_ms - elapsed);

		timeout_ms = (timeout_ms < 0) ? left : Min(timeout_ms, left);
	}

	http_prepare_wait_set();
	count = WaitEventSetWait(http_wait_set, timeout_ms, events, lengthof(events),
							 wait_event_info);
	for (int i = 0; i < count; i++)
	{
		if (events[i].events & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			latch_set = true;
		}
		else if (events[i].events & (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE))
		{
			int			what = 0;

			if (events[i].events & WL_SOCKET_READABLE)
				what |= CURL_CSELECT_IN;
			if (events[i].events & WL_SOCKET_WRITEABLE)
				what |= CURL_CSELECT_OUT;
			curl_multi_socket_action(http_multi, events[i].fd, what, &running);
		}
	}

	/* curl's own deadline (connect and request timeouts, retries of its own) */
	if (http_timer_ms >= 0 &&
		GetCurrentTimestamp() - http_timer_set_at >= (TimestampTz) http_timer_ms * 1000)
	{
		http_timer_ms = -1;
		curl_multi_socket_action(http_multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}
	return latch_set;
}

/*
 * Describe a transfer that ended without a usable response.
 */
static char *
http_describe_failure(Delivery *delivery)
{
	/*
	 * (a name with several addresses may have had one refused, one tried)
	 * The error names the parameters that open the address, as history is
	 * where an operator first meets the guard.
	 */
	if (delivery->blocked_reason[0] != '\0' && delivery->result == CURLE_COULDNT_CONNECT)
		return psprintf("address blocked: %s; allow it with webhook.allowed_networks or webhook.allow_private_networks",
						delivery->blocked_reason);
	if (delivery->curl_error[0] != '\0')
	{
		long		os_errno = 0;
		const char *cause;

		/* e.g. "Connection refused", which some libcurl versions leave out */
		if ((delivery->result == CURLE_COULDNT_CONNECT ||
			 delivery->result == CURLE_SEND_ERROR ||
			 delivery->result == CURLE_RECV_ERROR) &&
			curl_easy_getinfo(delivery->easy, CURLINFO_OS_ERRNO, &os_errno) == CURLE_OK &&
			os_errno != 0 &&
			strstr(delivery->curl_error, (cause = strerror((int) os_errno))) == NULL)
			return psprintf("%s: %s (%s)", curl_easy_strerror(delivery->result),
							delivery->curl_error, cause);
		return psprintf("%s: %s", curl_easy_strerror(delivery->result), delivery->curl_error);
	}
	return pstrdup(curl_easy_strerror(delivery->result));
}

/*
 * Keep only what history can store: the response cut at its first byte that
 * is not valid in the database encoding (or NUL).
 */
static void
http_clean_response(Delivery *delivery)
{
	int			valid = pg_encoding_verifymbstr(GetDatabaseEncoding(),
												delivery->response.data,
												delivery->response.len);

	delivery->response.len = valid;
	delivery->response.data[valid] = '\0';
}

/*
 * Take one finished request off curl, with its status, duration and error
 * filled in; NULL when none has finished.
 */
Delivery *
http_next_completed(void)
{
	CURLMsg    *message;
	int			queued;

	while ((message = curl_multi_info_read(http_multi, &queued)) != NULL)
	{
		Delivery   *delivery = NULL;
		CURL	   *easy = message->easy_handle;
		curl_off_t	total_us = 0;
		curl_off_t	retry_after = 0;

		MemoryContext caller;

		if (message->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &delivery);
		caller = MemoryContextSwitchTo(GetMemoryChunkContext(delivery));
		delivery->result = message->data.result;
		curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &delivery->status_code);
		curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME_T, &total_us);
		if (curl_easy_getinfo(easy, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK &&
			retry_after > 0)
			delivery->retry_after_s = (long) retry_after;
		delivery->duration_ms = (double) total_us / 1000.0;

		/* A response whose endless body we cut short still has its status. */
		if (delivery->result == CURLE_WRITE_ERROR && delivery->response_cut &&
			delivery->status_code > 0)
			delivery->result = CURLE_OK;
		if (delivery->result != CURLE_OK)
		{
			delivery->status_code = 0;
			delivery->error = http_describe_failure(delivery);
		}
		else
			delivery->error = NULL;
		http_clean_response(delivery);

		curl_multi_remove_handle(http_multi, easy);
		curl_easy_reset(easy);
		if (http_spare_count == http_spare_capacity)
		{
			http_spare_capacity = Max(16, http_spare_capacity * 2);
			http_spare_handles = http_grow(http_spare_handles,
														http_spare_capacity * sizeof(CURL *));
		}
		http_spare_handles[http_spare_count++] = easy;
		delivery->easy = NULL;
		curl_slist_free_all(delivery->headers);
		delivery->headers = NULL;
		MemoryContextSwitchTo(caller);
		return delivery;
	}
	return NULL;
}
