/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The background workers: a launcher, and the delivery worker it
 *		starts for webhook.database.
 *
 * The launcher connects to no database. It waits calmly until
 * webhook.database exists, starts the delivery worker there (by OID) and
 * starts it again whenever it stops. The delivery worker waits, as calmly,
 * until the extension is created, then loops:
 *
 *   take finished requests off curl and judge them (success, retry, gone);
 *   start deliveries it holds ready in the slots they freed;
 *   when there is reason to (new events, outcomes piling up, nothing left
 *   ready), in one short transaction: record those outcomes, dispatch
 *   events that committed since the last pass, fetch due deliveries to
 *   fill the slots and the ready queue;
 *   after commit, start what fits;
 *   sleep on the latch and curl's sockets together.
 *
 * The ready queue keeps requests flowing between passes, so that a pass
 * (a transaction: a fixed cost) records and fetches tens of deliveries, not
 * the few that finished since the last one. What it holds is taken but not
 * sent: it is let go (and fetched again if still due) as soon as its
 * endpoint fails, so that the circuit breaker and a 410 take effect at
 * once, and after WORKER_READY_MAX_MS, so that a cancel, delete or disable
 * is not outrun for long.
 *
 * No transaction is open while a request is in flight. An outcome is
 * recorded after the response; a crash in between re-sends the delivery
 * after restart with the same webhook-id (at least once, never lost).
 *
 *-------------------------------------------------------------------------
 */
#include "webhook_outbox.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/syncrep.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/plancache.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#if PG_VERSION_NUM >= 150000
#include "common/pg_prng.h"
#endif

#include "delivery.h"
#include "scheduler.h"

/*
 * Retention: once a minute the worker looks for history older than
 * webhook.retention, then removes it a batch at a time, one batch every
 * WORKER_RETENTION_PAUSE_MS between its delivery passes, until a batch
 * comes back short. Small batches stay on the indexes (1,000 events take
 * 15-45 ms; 10,000 make the planner scan whole tables) and never hold the
 * loop for long; 10 batches a second keep up with 10,000 events a second.
 */
#define WORKER_RETENTION_INTERVAL_MS (60 * 1000)
#define WORKER_RETENTION_PAUSE_MS 100
#define WORKER_RETENTION_BATCH 1000
#define WORKER_REPLAN_INTERVAL_MS (60 * 1000)
#define WORKER_STALLED_MS 1000

/*
 * The ready queue: a fetch takes up to WORKER_PREFETCH times
 * webhook.endpoint_concurrency deliveries per endpoint (counting those in
 * flight) and up to webhook.concurrency beyond the free slots in all.
 * Outcomes are recorded by any pass that runs anyway (a dispatch, a
 * refetch), and otherwise once there are webhook.concurrency of them or
 * WORKER_RECORD_DELAY_MS after the first (sooner for an ordered sequence's:
 * see worker_record_delay_ms).
 */
#define WORKER_PREFETCH 4
#define WORKER_READY_MAX_MS 100
#define WORKER_RECORD_DELAY_MS 10
#define WORKER_RECORD_DELAY_ORDERED_MS 1

/*
 * A retry, probe, hold end or rate-limit slot that comes due (the
 * scheduler's wake-ups) starts a pass of its own only this long after the
 * last fetch: a busy worker fetches that often anyway. At full speed the
 * retries of an endpoint failing one request in ten come due every few
 * hundred microseconds, and a pass for each made the passes 2.6 times as
 * many and their batches that much smaller (a quarter more CPU per
 * delivery).
 */
#define WORKER_SCHEDULED_GAP_US ((int64) WORKER_RECORD_DELAY_MS * 1000)

/*
 * A commit that emitted wakes the worker to dispatch; under a stream of
 * commits, dispatch passes start at least this far apart, each taking
 * every event committed meanwhile, and the worker leaves the wake-up
 * pending until then, so the commits in between do not signal it again.
 * That bounds what dispatch costs a busy ledger (a pass and a signal per
 * commit took a quarter of a core at a few thousand commits a second) and
 * adds at most this much to the latency.
 */
#define WORKER_DISPATCH_GAP_US 1000

/* The delivery worker's state */
static bool worker_no_extension = false;	/* leaving: no extension here */
static int	worker_index = 0;	/* which of its database's webhook.workers */
static int	worker_count = 1;	/* ... of how many */
static MemoryContext worker_context = NULL;
static Delivery **worker_in_flight = NULL;
static int	worker_in_flight_count = 0;
static Delivery **worker_done = NULL;
static int	worker_done_count = 0;
static TimestampTz worker_done_since = 0;	/* when the first of them finished */
static Delivery **worker_ready = NULL;	/* fetched, not started: oldest first */
static int	worker_ready_count = 0;
static int	worker_capacity = 0;
static TimestampTz worker_listened_at = 0;	/* when curl last read the sockets */
static int64 worker_busy_us = 0;	/* time spent in transactions, in all */

/*
 * The worker's position in each endpoint's queue (see due_deliveries):
 * forgotten for an endpoint when deliveries it took go back untried, and
 * for all when others may have become due behind them -- a wake-up to
 * rescan (replay, retry_delivery, re-enabling), a quarantine ending --
 * and at every poll in any case.
 */
static QueuePosition *worker_positions = NULL;
static int	worker_position_count = 0;
static int	worker_position_capacity = 0;

/*
 * Deliveries whose outcome could not be recorded at all, not even without
 * its history row (see worker_record_separately): still pending and due in
 * the table, so they are kept out of fetches until their next try, and at
 * least a minute, rather than sent again at once, in a loop. Only their
 * keys are kept, as many as there are: none is let go early.
 */
#define WORKER_QUARANTINE_MIN_MS (60 * 1000)
typedef struct QuarantinedDelivery
{
	DeliveryKey key;
	TimestampTz until;
} QuarantinedDelivery;
static QuarantinedDelivery *worker_quarantine = NULL;
static int	worker_quarantine_count = 0;
static int	worker_quarantine_capacity = 0;

/*
 * A dispatch pass takes at most this many events a transaction: a big
 * commit is dispatched in chunks, with deliveries started between them,
 * and its transaction stays short.
 */
#define WORKER_DISPATCH_CHUNK 1000

/* A delivery whose row an operator holds is recorded at most this often. */
#define WORKER_RECORD_LATER_MS 100

static void worker_reserve(int n);
static void worker_report_activity(bool ready);
static void worker_drain_and_exit(bool ready);
static long worker_record_delay_ms(void);

/*
 * Run fn in a transaction of its own; on error, log it, roll back and
 * return false. The worker never dies of a failed query.
 */
static bool
worker_transaction(void (*fn) (void *), void *arg, const char *what)
{
	MemoryContext caller = CurrentMemoryContext;
	volatile bool ok = true;
	TimestampTz started = GetCurrentTimestamp();

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	PG_TRY();
	{
		fn(arg);
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *error;

		MemoryContextSwitchTo(caller);
		error = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		ereport(WARNING,
				(errmsg("webhook_outbox worker could not %s: %s", what, error->message)));
		FreeErrorData(error);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	pgstat_report_stat(false);
	worker_busy_us += GetCurrentTimestamp() - started;
	return ok;
}

/*
 * Decide what a finished attempt means: success, 410, retry (when, with
 * Retry-After honoured up to webhook.retry_after_max) or failure.
 */
static void
worker_judge(Delivery *d)
{
	TimestampTz now = GetCurrentTimestamp();

	if (d->status_code >= 200 && d->status_code < 300)
	{
		d->outcome = OUTCOME_SUCCEEDED;
		return;
	}
	if (d->status_code == 410)
	{
		d->outcome = OUTCOME_GONE;
		d->error = MemoryContextStrdup(worker_context, "endpoint answered 410 Gone: disabled");
		return;
	}
	if (d->status_code >= 300 && d->status_code < 400)
		d->error = MemoryContextStrdup(worker_context, "redirects are not followed");

	if (d->attempt > webhook_retry_count)
	{
		d->outcome = OUTCOME_FAILED;
		return;
	}
	d->outcome = OUTCOME_RETRY;
	d->next_attempt_at = now + (TimestampTz)
		(webhook_retry_delays_ms[d->attempt - 1] * scheduler_jitter() * 1000.0);
	if ((d->status_code == 429 || d->status_code == 503) && d->retry_after_s >= 0)
	{
		TimestampTz asked = now + (TimestampTz)
			Min(d->retry_after_s, webhook_retry_after_max_s) * USECS_PER_SEC;

		d->next_attempt_at = Max(d->next_attempt_at, asked);
	}
	/* Wake when it is due, rather than at the next poll. */
	scheduler_wake_at(d->next_attempt_at);
}

/*
 * One chunk of dispatch, in a transaction of its own: a dispatch that
 * fails (say, a trigger an owner put on delivery_log) never keeps outcomes
 * from being recorded or deliveries from being fetched.
 */
typedef struct WorkerDispatch
{
	int			events;			/* events the chunk took */
	int64		deliveries;		/* deliveries it queued */
} WorkerDispatch;

static void
worker_dispatch_chunk(void *arg)
{
	WorkerDispatch *chunk = (WorkerDispatch *) arg;

	chunk->deliveries = queue_dispatch(WORKER_DISPATCH_CHUNK, &chunk->events);

}

/*
 * Durable before delivered. Dispatched events are visible, but a commit is
 * visible before it is durable when its session runs with
 * synchronous_commit = off (or local, where synchronous standbys are
 * named): a crash or a failover could take back an event already sent.
 * Before anything dispatched is fetched, the WAL is flushed, and confirmed
 * by the synchronous standbys, up to webhook_durable_bound(): nothing to
 * do unless such a transaction emitted, and then one flush covers every
 * event dispatched so far.
 */
static void
worker_make_durable(void)
{
	XLogRecPtr	bound = (XLogRecPtr) webhook_durable_bound();

	if (!XLogRecPtrIsInvalid(bound) && bound > GetFlushRecPtr(NULL))
		XLogFlush(bound);

	/*
	 * Where synchronous standbys are named, wait until they have flushed
	 * everything flushed here, not only the commits noted above: a commit
	 * made visible by crash recovery (the server restarted while its
	 * session waited for the standby) never waited for them.
	 */
	if (SyncRepStandbyNames != NULL && SyncRepStandbyNames[0] != '\0')
	{
		XLogRecPtr	flushed = GetFlushRecPtr(NULL);

		/* the wait honours synchronous_commit, which the worker sets off */
		SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE);
		SyncRepWaitForLSN(Max(bound, flushed), false);
		SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	}
}

/*
 * Whether the extension's schema is this library's (see worker_check_schema).
 */
static void
worker_schema_step(void *arg)
{
	SchemaState *state = (SchemaState *) arg;
	char	   *version;
	static bool said = false;

	*state = queue_schema_state(&version);
	if (*state == SCHEMA_OTHER_VERSION && !said)
	{
		ereport(LOG,
				(errmsg("webhook_outbox worker is waiting: the extension in database \"%s\" is at version \"%s\", this library serves version \"%s\"",
						get_database_name(MyDatabaseId), version, WEBHOOK_OUTBOX_VERSION),
				 errhint("Run ALTER EXTENSION webhook_outbox UPDATE in that database; events emitted meanwhile are delivered afterwards.")));
		said = true;
	}
	if (*state == SCHEMA_READY)
		said = false;
	if (version)
		pfree(version);
}

/*
 * The transaction body of a pass: record outcomes, at each poll disable
 * expired endpoints, fetch due deliveries.
 */
typedef struct WorkerPass
{
	bool		expire;			/* disable endpoints past their expires_at */
	bool		sequences;		/* start ordered sequences left waiting */
	bool		fetch;			/* fetch even if nothing was recorded */
	int			fetch_limit;
	Delivery  **fetched;		/* room for fetch_limit */
	int			fetched_count;
} WorkerPass;

static void
worker_pass(void *arg)
{
	WorkerPass *pass = (WorkerPass *) arg;

	if (worker_done_count > 0)
		queue_record(worker_done, worker_done_count, true);
	if (pass->expire)
		queue_disable_expired_endpoints();
	/* deliveries it started may be other workers' to send */
	if (pass->sequences && queue_start_waiting_sequences() > 0 && worker_count > 1)
		webhook_wake_at_commit(WEBHOOK_WAKE_DISPATCH);
	if (pass->fetch && pass->fetch_limit > 0)
	{
		/*
		 * Not to be fetched: what is in flight, ready, quarantined, or
		 * waiting to be recorded (its row was locked).
		 */
		int			busy_count = 0;
		pg_uuid_t  *blocked;
		pg_uuid_t  *probing;
		int			blocked_count;
		int			probing_count;
		DeliveryKey *busy = palloc(sizeof(DeliveryKey) *
								   (worker_in_flight_count + worker_ready_count +
									worker_quarantine_count + worker_done_count + 1));

		for (int i = 0; i < worker_in_flight_count; i++)
		{
			busy[busy_count].event_id = worker_in_flight[i]->event_id;
			busy[busy_count++].endpoint_id = worker_in_flight[i]->endpoint_id;
		}
		for (int i = 0; i < worker_ready_count; i++)
		{
			busy[busy_count].event_id = worker_ready[i]->event_id;
			busy[busy_count++].endpoint_id = worker_ready[i]->endpoint_id;
		}
		for (int i = 0; i < worker_done_count; i++)
		{
			/* Just recorded: not busy (nor counted against its endpoint). */
			if (!worker_done[i]->record_later)
				continue;
			busy[busy_count].event_id = worker_done[i]->event_id;
			busy[busy_count++].endpoint_id = worker_done[i]->endpoint_id;
		}
		for (int i = 0; i < worker_quarantine_count; i++)
			busy[busy_count++] = worker_quarantine[i].key;
		blocked = palloc(sizeof(pg_uuid_t) * (scheduler_waiting_endpoints() + 1));
		probing = palloc(sizeof(pg_uuid_t) * (scheduler_waiting_endpoints() + 1));
		scheduler_fetch_limits(GetCurrentTimestamp(), blocked, &blocked_count,
							   probing, &probing_count);
		pass->fetched_count = queue_fetch(pass->fetch_limit,
										  webhook_per_endpoint_concurrency * WORKER_PREFETCH,
										  busy, busy_count, worker_positions, worker_position_count,
										  blocked, blocked_count, probing, probing_count,
										  worker_index, worker_count,
										  pass->fetched, worker_context);
	}
}

/*
 * Free what a failed pass had fetched: it stays pending in the table, and
 * a later fetch takes it again.
 */
static void
worker_free_fetched(WorkerPass *pass)
{
	for (int i = 0; i < pass->fetch_limit && pass->fetched[i] != NULL; i++)
		queue_free_delivery(pass->fetched[i]);
	pass->fetched_count = 0;
}

/*
 * An array of the worker's (in worker_context) with room for at least
 * needed elements of size bytes: the same one, or a larger one with the
 * same contents; *capacity follows.
 */
static void *
worker_grow(void *array, int needed, int *capacity, Size size)
{
	if (needed <= *capacity)
		return array;
	*capacity = Max(Max(16, needed), *capacity * 2);
	return array == NULL ?
		MemoryContextAlloc(worker_context, size * *capacity) :
		repalloc(array, size * *capacity);
}

/*
 * The position in an endpoint's queue, or NULL.
 */
static QueuePosition *
worker_position(const pg_uuid_t *endpoint)
{
	for (int i = 0; i < worker_position_count; i++)
		if (memcmp(&worker_positions[i].endpoint_id, endpoint, sizeof(pg_uuid_t)) == 0)
			return &worker_positions[i];
	return NULL;
}

/*
 * Move the position in an endpoint's queue to a delivery just fetched
 * (fetches come in queue order: the last one is the furthest).
 */
static void
worker_advance_position(const Delivery *d)
{
	QueuePosition *position = worker_position(&d->endpoint_id);

	if (position == NULL)
	{
		worker_positions = worker_grow(worker_positions, worker_position_count + 1,
									   &worker_position_capacity, sizeof(QueuePosition));
		position = &worker_positions[worker_position_count++];
		position->endpoint_id = d->endpoint_id;
	}
	position->at = d->due_at;
	position->event_id = d->event_id;
}

/*
 * Forget the position in an endpoint's queue: the next fetch starts at its
 * oldest due delivery.
 */
static void
worker_forget_position(const pg_uuid_t *endpoint)
{
	QueuePosition *position = worker_position(endpoint);

	if (position != NULL)
		*position = worker_positions[--worker_position_count];
}

/*
 * Record one outcome alone (after its batch failed to record), with its
 * history row or, as a last resort, without.
 */
static void
worker_record_one(void *arg)
{
	queue_record((Delivery **) arg, 1, true);
}

static void
worker_record_one_without_history(void *arg)
{
	queue_record((Delivery **) arg, 1, false);
}

/*
 * Keep a delivery whose outcome could not be recorded out of fetches until
 * its next try is due, and at least a minute.
 */
static void
worker_quarantine_add(Delivery *d)
{
	TimestampTz earliest = GetCurrentTimestamp() +
		(TimestampTz) WORKER_QUARANTINE_MIN_MS * 1000;
	QuarantinedDelivery *entry;

	worker_quarantine = worker_grow(worker_quarantine, worker_quarantine_count + 1,
									&worker_quarantine_capacity, sizeof(QuarantinedDelivery));
	entry = &worker_quarantine[worker_quarantine_count++];
	entry->key.event_id = d->event_id;
	entry->key.endpoint_id = d->endpoint_id;
	entry->until = (d->outcome == OUTCOME_RETRY && d->next_attempt_at > earliest) ?
		d->next_attempt_at : earliest;
}

/*
 * Release quarantined deliveries whose time has come: the next fetch may
 * take them again (from the oldest: they may lie behind the positions).
 */
static void
worker_quarantine_expire(TimestampTz now)
{
	int			kept = 0;

	for (int i = 0; i < worker_quarantine_count; i++)
		if (worker_quarantine[i].until > now)
			worker_quarantine[kept++] = worker_quarantine[i];
	if (kept < worker_quarantine_count)
		worker_position_count = 0;
	worker_quarantine_count = kept;
}

/*
 * Record each outcome of a batch that failed as a whole in a transaction of
 * its own; failing that, without its response body; failing that, without
 * its history row (the delivery's state alone: a success is then never
 * sent again, even after a restart). One that still cannot be recorded is
 * logged and quarantined.
 */
static void
worker_record_separately(void)
{
	for (int i = 0; i < worker_done_count; i++)
	{
		Delivery   *d = worker_done[i];

		if (worker_transaction(worker_record_one, &worker_done[i], "record a delivery outcome"))
			continue;
		d->response.len = 0;
		d->response.data[0] = '\0';
		if (worker_transaction(worker_record_one, &worker_done[i],
							   "record a delivery outcome without its response"))
			continue;
		if (worker_transaction(worker_record_one_without_history, &worker_done[i],
							   "record a delivery outcome without its history"))
		{
			ereport(WARNING,
					(errmsg("webhook_outbox worker recorded an attempt of event %s without its history row",
							d->event_id_text)));
			continue;
		}
		ereport(WARNING,
				(errmsg("webhook_outbox worker could not record an attempt of event %s; it is not tried again for a minute or more",
						d->event_id_text)));
		d->record_later = false;
		worker_quarantine_add(d);
	}
}

/*
 * Release the recorded deliveries; keep those whose row was locked, to be
 * recorded at a pass WORKER_RECORD_LATER_MS from now.
 */
static void
worker_forget_done(void)
{
	int			kept = 0;

	for (int i = 0; i < worker_done_count; i++)
	{
		if (worker_done[i]->record_later)
			worker_done[kept++] = worker_done[i];
		else
			queue_free_delivery(worker_done[i]);
	}
	worker_done_count = kept;
	if (kept > 0)
		worker_done_since = GetCurrentTimestamp() +
			(TimestampTz) (WORKER_RECORD_LATER_MS - WORKER_RECORD_DELAY_MS) * 1000;
}

/*
 * Make room for n more deliveries in the in-flight, done and ready arrays.
 */
static void
worker_reserve(int n)
{
	int			needed = Max(Max(worker_in_flight_count, worker_done_count),
							 worker_ready_count) + n;

	if (needed <= worker_capacity)
		return;
	worker_capacity = Max(needed, worker_capacity * 2);
	worker_in_flight = repalloc(worker_in_flight, sizeof(Delivery *) * worker_capacity);
	worker_done = repalloc(worker_done, sizeof(Delivery *) * worker_capacity);
	worker_ready = repalloc(worker_ready, sizeof(Delivery *) * worker_capacity);
}

/*
 * Give back untried the ready deliveries to an endpoint (it just failed:
 * the next fetch decides, with the circuit breaker, what it gets), or with
 * endpoint NULL those fetched before fetched_before. They stay pending in
 * the table, behind the worker's position, which is forgotten; returns how
 * many.
 */
static int
worker_release_ready(const pg_uuid_t *endpoint, TimestampTz fetched_before)
{
	int			kept = 0;
	int			released = 0;

	for (int i = 0; i < worker_ready_count; i++)
	{
		Delivery   *d = worker_ready[i];

		if (endpoint != NULL ?
			memcmp(&d->endpoint_id, endpoint, sizeof(pg_uuid_t)) == 0 :
			d->fetched_at < fetched_before)
		{
			worker_forget_position(&d->endpoint_id);
			queue_free_delivery(d);
			released++;
		}
		else
			worker_ready[kept++] = d;
	}
	worker_ready_count = kept;
	return released;
}

/*
 * Move finished requests from in flight to done, judged; returns how many
 * ready deliveries were let go because their endpoint may take no more.
 */
static int
worker_collect_completed(void)
{
	Delivery   *d;
	int			released = 0;

	while ((d = http_next_completed()) != NULL)
	{
		for (int i = 0; i < worker_in_flight_count; i++)
			if (worker_in_flight[i] == d)
			{
				worker_in_flight[i] = worker_in_flight[--worker_in_flight_count];
				break;
			}
		worker_judge(d);
		worker_reserve(1);
		if (worker_done_count == 0)
			worker_done_since = GetCurrentTimestamp();
		worker_done[worker_done_count++] = d;

		/*
		 * A failure of this message alone changes nothing for the others;
		 * an endpoint that fails as a whole, asks to be left alone, or is
		 * gone gets back what was held ready for it.
		 */
		if (scheduler_finished(d, GetCurrentTimestamp()) || d->outcome == OUTCOME_GONE)
			released += worker_release_ready(&d->endpoint_id, 0);
	}
	return released;
}

/*
 * How many more requests may start. Requests waiting longer than
 * WORKER_STALLED_MS for their answer stop counting against
 * webhook.concurrency, up to as many again: endpoints that hang cannot
 * take every slot before they are known to be failing (after which
 * due_deliveries gives each of them one request at a time). Their wait
 * counts only the time the worker was reading its sockets: up to the last
 * time it did, less the time it spent in its own transactions meanwhile
 * (a pass that dispatches 100,000 deliveries takes a second, during which
 * curl does not even send what was just started). curl is told the same
 * limit for its connections, idle ones included.
 */
static int
worker_free_slots(void)
{
	int			limit = http_max_in_flight();
	int			stalled = 0;

	for (int i = 0; i < worker_in_flight_count; i++)
	{
		Delivery   *d = worker_in_flight[i];
		int64		waited_us = (worker_listened_at - d->started_at) -
			(worker_busy_us - d->busy_us_at_start);

		if (waited_us > (int64) WORKER_STALLED_MS * 1000)
			stalled++;
	}
	http_limit_connections(limit + stalled);
	return Max(0, Min(limit - (worker_in_flight_count - stalled),
					  2 * limit - worker_in_flight_count));
}

/*
 * Hand a delivery to curl. An error on the way (out of memory, curl
 * refusing the handle) is that delivery's failed attempt, judged and
 * recorded like any other: outside a transaction, an ERROR would otherwise
 * end the worker and re-send everything in flight. Returns whether the
 * request is in flight.
 */
static bool
worker_http_start(Delivery *d)
{
	MemoryContext caller = CurrentMemoryContext;
	volatile bool started = true;

	PG_TRY();
	{
		http_start(d);
	}
	PG_CATCH();
	{
		ErrorData  *error;

		MemoryContextSwitchTo(caller);
		error = CopyErrorData();
		FlushErrorState();
		http_abandon(d);
		d->status_code = 0;
		d->duration_ms = 0;
		if (d->started_at == 0)
			d->started_at = GetCurrentTimestamp();
		d->error = MemoryContextStrdup(worker_context, error->message);
		FreeErrorData(error);
		worker_judge(d);
		worker_reserve(1);
		if (worker_done_count == 0)
			worker_done_since = GetCurrentTimestamp();
		worker_done[worker_done_count++] = d;
		started = false;
	}
	PG_END_TRY();
	return started;
}

/*
 * Start ready deliveries, oldest first, as far as the free slots and the
 * scheduler (breaker, Retry-After, rate limit, endpoint concurrency)
 * allow; the rest stay ready, in order.
 */
static void
worker_start_ready(void)
{
	int			free_slots;
	int			kept = 0;
	int			started = 0;
	TimestampTz now;

	if (worker_ready_count == 0)
		return;
	free_slots = worker_free_slots();
	now = GetCurrentTimestamp();
	for (int i = 0; i < worker_ready_count; i++)
	{
		Delivery   *d = worker_ready[i];
		SchedulerReason reason;

		if (started < free_slots && scheduler_may_start(d, now, &reason))
		{
			d->busy_us_at_start = worker_busy_us;
			if (worker_http_start(d))
			{
				scheduler_started(d, now);
				worker_in_flight[worker_in_flight_count++] = d;
			}
			started++;
		}
		else
			worker_ready[kept++] = d;
	}
	worker_ready_count = kept;
	if (started > 0)
		worker_report_activity(true);
}

/*
 * Whether the outcomes waiting to be recorded need a pass of their own:
 * there are as many as there are slots, or the first has waited
 * WORKER_RECORD_DELAY_MS. Until then a pass that runs anyway (a dispatch
 * under a steady trickle) records them on its way: one transaction, not
 * two.
 */
static bool
worker_record_due(TimestampTz now)
{
	return worker_done_count > 0 &&
		(worker_done_count >= http_max_in_flight() ||
		 TimestampDifferenceExceeds(worker_done_since, now, worker_record_delay_ms()));
}

/*
 * How long finished deliveries may wait to be recorded together. The next
 * delivery of an ordered sequence starts only once the outcome of the one
 * before is recorded: then at once when nothing else is in flight to wait
 * for, else after WORKER_RECORD_DELAY_ORDERED_MS.
 */
static long
worker_record_delay_ms(void)
{
	for (int i = 0; i < worker_done_count; i++)
		if (worker_done[i]->ordered && !worker_done[i]->record_later)
			return worker_in_flight_count == 0 ? 0 : WORKER_RECORD_DELAY_ORDERED_MS;
	return WORKER_RECORD_DELAY_MS;
}

/*
 * Before exit: stop using the latch and curl.
 */
static void
worker_on_exit(int code, Datum arg)
{
	webhook_worker_detach(worker_no_extension);
	http_shutdown();
}

/*
 * Show what the worker is doing in pg_stat_activity.
 */
static void
worker_report_activity(bool ready)
{
	char		activity[160];

	if (!ready)
		snprintf(activity, sizeof(activity),
				 "waiting for CREATE EXTENSION webhook_outbox");
	else
	{
		int			open;
		int			held;
		int			limited;

		scheduler_count_waiting(GetCurrentTimestamp(), &open, &held, &limited);
		if (open + held + limited == 0)
			snprintf(activity, sizeof(activity), "delivering: %d in flight",
					 worker_in_flight_count);
		else
			snprintf(activity, sizeof(activity),
					 "delivering: %d in flight; %d endpoint(s) failing (breaker open), %d held by Retry-After, %d at their rate limit",
					 worker_in_flight_count, open, held, limited);
	}
	pgstat_report_activity(worker_in_flight_count > 0 ? STATE_RUNNING : STATE_IDLE, activity);
}

/*
 * One step of retention, from where the last one stopped.
 */
static void
worker_remove_batch(void *arg)
{
	(void) queue_remove_old_history(WORKER_RETENTION_BATCH, (RetentionPosition *) arg);
}

/*
 * Take a step of retention's walk over the old history; true while old
 * history may remain after it. The position is the walk's: each step reads
 * the next batch, so the events kept (those still pending) are read once a
 * walk, not again at every batch. A failed step starts the walk afresh.
 */
static bool
worker_apply_retention(RetentionPosition *position)
{
	if (!worker_transaction(worker_remove_batch, position, "remove old history"))
		position->set = false;
	return position->set;
}

/*
 * webhook.workers changed: finish the requests in flight (within the
 * request timeout), record them and leave, so that the new set of workers
 * never shares an endpoint with this one. What was fetched but not started
 * stays pending for them.
 */
static void
worker_drain_and_exit(bool ready)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   webhook_timeout_ms + 1000);

	pgstat_report_activity(STATE_RUNNING, "draining: webhook.workers changed");
	for (int i = 0; i < worker_ready_count; i++)
		queue_free_delivery(worker_ready[i]);
	worker_ready_count = 0;
	while (worker_in_flight_count > 0 && !ShutdownRequestPending &&
		   GetCurrentTimestamp() < deadline)
	{
		CHECK_FOR_INTERRUPTS();
		worker_collect_completed();
		if (worker_in_flight_count > 0)
			(void) http_wait(100, PG_WAIT_EXTENSION);
	}
	worker_collect_completed();
	if (ready && worker_done_count > 0)
	{
		WorkerPass	pass;

		memset(&pass, 0, sizeof(pass));
		(void) worker_transaction(worker_pass, &pass, "record delivery outcomes");
	}
	proc_exit(0);
}

/*
 * What the worker's cycle remembers from one turn to the next.
 */
typedef struct WorkerCycle
{
	bool		dispatcher;		/* the worker that dispatches, expires, cleans */
	bool		ready;			/* the extension is here, at our version */
	bool		dispatch_more;	/* a big commit's next chunk is due */
	bool		retention_pending;
	RetentionPosition retention_position;	/* where that walk stands */
	TimestampTz last_poll;
	TimestampTz last_dispatch;
	TimestampTz last_retention;
	TimestampTz last_replan;
	TimestampTz last_fetch;		/* when the queue was last looked at */

	/* this turn */
	TimestampTz now;
	bool		poll_due;
	uint32		wake;			/* WEBHOOK_WAKE_* taken this turn */
	int			released;		/* ready deliveries let go */
	bool		dispatched;		/* new deliveries, perhaps ours */
} WorkerCycle;

/*
 * Connect to the database, set the worker's session up, claim its slot.
 */
static void
worker_setup(Oid database)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(database, InvalidOid, 0);
	if (sscanf(MyBgworkerEntry->bgw_extra, "%d %d", &worker_index, &worker_count) != 2 ||
		worker_count < 1 || worker_index < 0 || worker_index >= worker_count)
	{
		worker_index = 0;
		worker_count = 1;
	}

	/*
	 * The worker's own commits need not wait for the WAL flush: losing its
	 * last writes in a crash only re-dispatches or re-sends, and every
	 * re-send carries the same webhook-id.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("search_path", "pg_catalog", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("application_name", "webhook_outbox worker", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * The worker's queries are small and run many times a second; JIT
	 * compiling them (their estimates can pass jit_above_cost while the
	 * tables are young and unanalyzed) adds 100 ms or more to each pass.
	 */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Plan each of the worker's statements once, not at every pass: with
	 * the default, a statement with parameters is planned again for each
	 * call whenever its generic plan looks dearer than the custom ones, and
	 * that planning (catalog look-ups, a relation size per table and index)
	 * cost as much as running them. Their shapes do not depend on the
	 * values: every access goes through a key or the pending index.
	 */
	SetConfigOption("plan_cache_mode", "force_generic_plan", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * A plan made while the queue tables are small (after CREATE EXTENSION,
	 * or an ANALYZE of an idle queue) would read them whole once they fill,
	 * until the next re-plan at the poll. Every read of the worker goes
	 * through a key or an index: keep the planner on them.
	 */
	SetConfigOption("enable_seqscan", "off", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * A backstop: the worker's statements skip rows users hold rather than
	 * wait for them (see record_attempts); should one still wait on a lock
	 * (an owner's ALTER TABLE, say), the pass fails and is tried again
	 * instead of holding every delivery.
	 */
	SetConfigOption("lock_timeout", "1s", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * And when such a wait closes a cycle with a user's command (DROP
	 * EXTENSION locks the tables one by one while a pass reads them in
	 * another order), the worker looks for the deadlock first, long before
	 * the user's session would, and so is the one that gives way: its pass
	 * is tried again, the user's command goes through.
	 */
	SetConfigOption("deadlock_timeout", "50ms", PGC_SUSET, PGC_S_OVERRIDE);

	worker_context = AllocSetContextCreate(TopMemoryContext, "webhook_outbox deliveries",
										   ALLOCSET_DEFAULT_SIZES);
	worker_capacity = 64;
	worker_in_flight = MemoryContextAlloc(worker_context, sizeof(Delivery *) * worker_capacity);
	worker_done = MemoryContextAlloc(worker_context, sizeof(Delivery *) * worker_capacity);
	worker_ready = MemoryContextAlloc(worker_context, sizeof(Delivery *) * worker_capacity);

	scheduler_init();
	before_shmem_exit(worker_on_exit, (Datum) 0);
	if (!webhook_worker_claim(database, worker_index))
	{
		ereport(LOG,
				(errmsg("webhook_outbox worker %d for the database of OID %u exits: another worker serves it",
						worker_index + 1, database)));
		proc_exit(0);
	}
	http_init();
	webhook_worker_attach();
	worker_report_activity(false);
}

/*
 * Signals: a reload applies the new parameters; a drain (webhook.workers
 * changed) ends the worker here.
 */
static void
worker_take_signals(WorkerCycle *cycle)
{
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		http_apply_settings();
	}
	if (webhook_drain_requested())
		worker_drain_and_exit(cycle->ready);
}

/*
 * Take finished requests off curl, start ready ones, let go of those held
 * ready too long; note the time, whether a poll is due, and the wake-up.
 */
static void
worker_tend_requests(WorkerCycle *cycle)
{
	TimestampTz now;

	cycle->released = worker_collect_completed();
	now = GetCurrentTimestamp();
	worker_start_ready();
	if (worker_in_flight_count == 0 && worker_done_count > 0)
		worker_report_activity(cycle->ready);

	worker_quarantine_expire(now);
	cycle->released += worker_release_ready(NULL, now - (TimestampTz) WORKER_READY_MAX_MS * 1000);
	cycle->now = now;
	cycle->poll_due = TimestampDifferenceExceeds(cycle->last_poll, now, webhook_poll_interval_ms);
	cycle->wake = now - cycle->last_dispatch >= WORKER_DISPATCH_GAP_US ? webhook_consume_wake() : 0;
	cycle->dispatched = false;
	if ((cycle->wake & WEBHOOK_WAKE_RESCAN) || cycle->poll_due)
		worker_position_count = 0;

	/*
	 * Plan the worker's statements afresh now and then. Their plans are
	 * kept (see queue.c), and a plan made while the queue tables were
	 * empty -- after CREATE EXTENSION, or after an ANALYZE of an idle
	 * queue -- could read whole tables once they have filled; the plan
	 * cache would only notice at the next ANALYZE. Not at every poll:
	 * planning every statement again stalls deliveries for tens of
	 * milliseconds (the p99 of a steady stream), and with sequential
	 * scans off the plans stay on the indexes meanwhile.
	 */
	if (cycle->poll_due)
		cycle->last_poll = now;
	if (TimestampDifferenceExceeds(cycle->last_replan, now, WORKER_REPLAN_INTERVAL_MS))
	{
		ResetPlanCache();
		cycle->last_replan = now;
	}
}

/*
 * Is the extension there, at this library's version? (At each poll, and
 * when woken while it was not.)
 */
static void
worker_check_schema(WorkerCycle *cycle)
{
	SchemaState state = SCHEMA_READY;
	bool		now_ready;

	if (!cycle->poll_due && (cycle->ready || cycle->wake == 0))
		return;
	now_ready = worker_transaction(worker_schema_step, &state, "look for the extension") &&
		state == SCHEMA_READY;

	/*
	 * Not installed here (never, or dropped): leave, and let the launcher
	 * know, so that no worker stays connected to a database that does not
	 * use the extension.
	 */
	if (state == SCHEMA_MISSING)
	{
		worker_no_extension = true;
		proc_exit(0);
	}
	if (now_ready != cycle->ready)
	{
		cycle->ready = now_ready;
		worker_report_activity(cycle->ready);
	}
}

/*
 * Dispatch a chunk of newly committed events (the first worker of the
 * database; the others are woken when it has, to fetch).
 */
static void
worker_dispatch(WorkerCycle *cycle)
{
	WorkerDispatch chunk = {0};
	bool		done;

	if (!cycle->dispatcher)
	{
		if (cycle->wake & WEBHOOK_WAKE_DISPATCH)
			cycle->dispatched = true;	/* new deliveries, perhaps ours */
		return;
	}
	if (!cycle->ready ||
		!(cycle->poll_due || (cycle->wake & WEBHOOK_WAKE_DISPATCH) || cycle->dispatch_more))
		return;
	done = worker_transaction(worker_dispatch_chunk, &chunk, "dispatch new events");
	if (done && chunk.deliveries > 0)
		worker_make_durable();
	cycle->dispatch_more = done && chunk.events >= WORKER_DISPATCH_CHUNK;
	cycle->dispatched = done && chunk.deliveries > 0;
	if (cycle->dispatched && worker_count > 1)
		webhook_wake_siblings(WEBHOOK_WAKE_DISPATCH);
	cycle->last_dispatch = cycle->now;
}

/*
 * When the scheduler's next wake-up (a retry, probe or hold end come due)
 * may start a pass: at that moment, but no sooner than
 * WORKER_SCHEDULED_GAP_US after the last fetch; 0 when none is waiting.
 */
static TimestampTz
worker_scheduled_at(const WorkerCycle *cycle)
{
	TimestampTz next = scheduler_next_wakeup();

	return next == 0 ? 0 : Max(next, cycle->last_fetch + WORKER_SCHEDULED_GAP_US);
}

/*
 * Record and fetch, in one transaction, when there are new deliveries,
 * outcomes due to be recorded (or riding along with a dispatch), ready
 * deliveries just let go to fetch again, or a reason to look at the queue
 * afresh; then, after commit, queue what was fetched and start what fits.
 */
static void
worker_record_and_fetch(WorkerCycle *cycle)
{
	TimestampTz now = cycle->now;
	uint32		wake = cycle->wake;
	TimestampTz scheduled_at = worker_scheduled_at(cycle);
	bool		scheduled = scheduled_at != 0 && scheduled_at <= now &&
		scheduler_wakeup_due(now, cycle->last_fetch);
	WorkerPass	pass;

	if (!cycle->ready ||
		!(cycle->dispatched || cycle->poll_due || scheduled || (wake & WEBHOOK_WAKE_RESCAN) ||
		  worker_record_due(now) || cycle->released > 0 ||
		  ((wake & WEBHOOK_WAKE_DISPATCH) && worker_done_count > 0)))
		return;

	memset(&pass, 0, sizeof(pass));
	pass.fetch = cycle->dispatched || cycle->poll_due || scheduled ||
		(wake & WEBHOOK_WAKE_RESCAN) || worker_done_count > 0 || cycle->released > 0;
	pass.expire = cycle->dispatcher && cycle->poll_due;
	pass.sequences = cycle->dispatcher && (cycle->poll_due || (wake & WEBHOOK_WAKE_RESCAN));
	pass.fetch_limit = Max(0, worker_free_slots() + http_max_in_flight() - worker_ready_count);
	pass.fetched = MemoryContextAllocZero(worker_context,
										  sizeof(Delivery *) * (pass.fetch_limit + 1));
	if (worker_transaction(worker_pass, &pass, "run a delivery pass"))
	{
		worker_forget_done();
		if (pass.fetch)
			cycle->last_fetch = now;
	}
	else
	{
		/*
		 * Look for the extension again at the next poll before any other
		 * pass (no loop of warnings).
		 */
		worker_free_fetched(&pass);
		cycle->ready = false;
		worker_report_activity(cycle->ready);
		if (worker_done_count > 0)
		{
			worker_record_separately();
			worker_forget_done();
		}
	}

	/* After commit: queue the fetched deliveries, start what fits. */
	if (pass.fetched_count > 0)
	{
		worker_reserve(pass.fetched_count + worker_in_flight_count);
		for (int i = 0; i < pass.fetched_count; i++)
		{
			pass.fetched[i]->fetched_at = now;
			worker_advance_position(pass.fetched[i]);
			worker_ready[worker_ready_count++] = pass.fetched[i];
		}
		worker_start_ready();
	}
	pfree(pass.fetched);
}

/*
 * Remove old history, a batch at a time (the dispatching worker).
 */
static void
worker_retention(WorkerCycle *cycle)
{
	if (cycle->dispatcher && cycle->ready && !cycle->retention_pending &&
		TimestampDifferenceExceeds(cycle->last_retention, cycle->now, WORKER_RETENTION_INTERVAL_MS))
		cycle->retention_pending = true;
	if (cycle->retention_pending &&
		TimestampDifferenceExceeds(cycle->last_retention, cycle->now, WORKER_RETENTION_PAUSE_MS))
	{
		cycle->retention_pending = cycle->ready &&
			worker_apply_retention(&cycle->retention_position);
		cycle->last_retention = cycle->now;
	}
}

/*
 * Sleep until a commit, a socket, curl's timer, the next poll, or the
 * moment outcomes are due to be recorded, ready deliveries to be let go, a
 * retry or probe is due or a hold ends (the scheduler), or the next chunk
 * of a big commit dispatched.
 */
static void
worker_sleep(WorkerCycle *cycle)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz scheduled_at = worker_scheduled_at(cycle);
	long		timeout_ms = webhook_poll_interval_ms - (long) ((now - cycle->last_poll) / 1000);

	if (cycle->retention_pending)
		timeout_ms = Min(timeout_ms, WORKER_RETENTION_PAUSE_MS);
	if (worker_done_count > 0)
		timeout_ms = Min(timeout_ms, worker_record_delay_ms() -
						 (long) ((now - worker_done_since) / 1000));
	if (worker_ready_count > 0)
		timeout_ms = Min(timeout_ms, WORKER_READY_MAX_MS -
						 (long) ((now - worker_ready[0]->fetched_at) / 1000));
	if (webhook_wake_pending())
		timeout_ms = Min(timeout_ms,
						 (WORKER_DISPATCH_GAP_US - (now - cycle->last_dispatch) + 999) / 1000);
	if (scheduled_at != 0)
		timeout_ms = Min(timeout_ms, (scheduled_at - now + 999) / 1000);
	if (cycle->dispatch_more)
		timeout_ms = 0;
	(void) http_wait(Max(timeout_ms, 0), PG_WAIT_EXTENSION);
	worker_listened_at = GetCurrentTimestamp();
}

/*
 * The delivery worker: its cycle, as named steps.
 */
void
webhook_worker_main(Datum main_arg)
{
	WorkerCycle cycle;

	worker_setup(DatumGetObjectId(main_arg));
	memset(&cycle, 0, sizeof(cycle));
	cycle.dispatcher = worker_index == 0;

	while (!ShutdownRequestPending)
	{
		worker_take_signals(&cycle);
		worker_tend_requests(&cycle);
		worker_check_schema(&cycle);
		worker_dispatch(&cycle);
		worker_record_and_fetch(&cycle);
		worker_retention(&cycle);
		worker_sleep(&cycle);
	}

	/*
	 * SIGTERM: record what has finished; requests still in flight stay
	 * pending and are sent again after restart.
	 */
	worker_collect_completed();
	if (cycle.ready && worker_done_count > 0)
	{
		WorkerPass	pass;

		memset(&pass, 0, sizeof(pass));
		(void) worker_transaction(worker_pass, &pass, "record delivery outcomes");
	}
	proc_exit(1);
}
