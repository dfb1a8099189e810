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
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/plancache.h"
#include "utils/snapmgr.h"
#if PG_VERSION_NUM >= 150000
#include "common/pg_prng.h"
#endif

#include "delivery.h"

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
#define WORKER_RELAUNCH_DELAY_MS 1000
#define WORKER_STALLED_MS 1000

/*
 * The ready queue: a fetch takes up to WORKER_PREFETCH times
 * webhook.endpoint_concurrency deliveries per endpoint (counting those in
 * flight) and up to webhook.concurrency beyond the free slots in all.
 * Outcomes are recorded by any pass that runs anyway (a dispatch, a
 * refetch), and otherwise once there are webhook.concurrency of them or
 * WORKER_RECORD_DELAY_MS after the first.
 */
#define WORKER_PREFETCH 4
#define WORKER_READY_MAX_MS 100
#define WORKER_RECORD_DELAY_MS 10

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

PGDLLEXPORT void webhook_launcher_main(Datum main_arg);

/* The delivery worker's state */
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
 * Deliveries whose outcome could not be recorded: still pending and due in
 * the table, so they are kept out of fetches until next_attempt_at rather
 * than sent again at once, in a loop. Bounded; the oldest goes first.
 */
#define WORKER_QUARANTINE_MAX 256
#define WORKER_QUARANTINE_MIN_MS (60 * 1000)
static Delivery *worker_quarantine[WORKER_QUARANTINE_MAX];
static int	worker_quarantine_count = 0;

static void worker_reserve(int n);
static void worker_report_activity(bool ready);

/*
 * Register the launcher (from _PG_init, when preloaded).
 */
void
webhook_register_worker(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "webhook_outbox");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "webhook_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "webhook_outbox launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "webhook_outbox launcher");
	RegisterBackgroundWorker(&worker);
}

/*
 * The OID of webhook.database, or InvalidOid while it does not exist. The
 * launcher has no database, so it reads pg_database by a plain scan, as
 * the autovacuum launcher does (its indexes need a database's relcache).
 */
static Oid
launcher_database_oid(void)
{
	Oid			oid = InvalidOid;
	Relation	relation;
	TableScanDesc scan;
	HeapTuple	tuple;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	relation = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(relation, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tuple);

		if (strcmp(NameStr(db->datname), webhook_database) == 0 && db->datallowconn)
		{
			oid = db->oid;
			break;
		}
	}
	table_endscan(scan);
	table_close(relation, AccessShareLock);
	CommitTransactionCommand();
	return oid;
}

/*
 * Start the delivery worker for a database; NULL if no slot was free.
 */
static BackgroundWorkerHandle *
launcher_start_worker(Oid database)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;	/* the launcher restarts it */
	worker.bgw_main_arg = ObjectIdGetDatum(database);
	worker.bgw_notify_pid = MyProcPid;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "webhook_outbox");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "webhook_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "webhook_outbox worker for \"%s\"", webhook_database);
	snprintf(worker.bgw_type, BGW_MAXLEN, "webhook_outbox worker");
	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		ereport(LOG,
				(errmsg("webhook_outbox could not start its delivery worker"),
				 errhint("Raise max_worker_processes.")));
		return NULL;
	}
	return handle;
}

/*
 * The launcher's main loop.
 */
void
webhook_launcher_main(Datum main_arg)
{
	BackgroundWorkerHandle *handle = NULL;
	TimestampTz last_launch = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_activity(STATE_IDLE, "waiting for the delivery worker");

	while (!ShutdownRequestPending)
	{
		pid_t		pid;
		long		wait_ms = 5000;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		if (handle != NULL && GetBackgroundWorkerPid(handle, &pid) == BGWH_STOPPED)
		{
			pfree(handle);
			handle = NULL;
		}
		if (handle == NULL)
		{
			long		since_ms = (long) ((GetCurrentTimestamp() - last_launch) / 1000);

			if (since_ms < WORKER_RELAUNCH_DELAY_MS)
				wait_ms = WORKER_RELAUNCH_DELAY_MS - since_ms;
			else
			{
				Oid			database = launcher_database_oid();

				if (OidIsValid(database))
				{
					handle = launcher_start_worker(database);
					last_launch = GetCurrentTimestamp();
				}
			}
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	if (handle != NULL)
		TerminateBackgroundWorker(handle);
	proc_exit(1);
}

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
 * A random factor in [0.8, 1.2): Svix's ±20 % jitter on retry delays.
 */
static double
worker_jitter(void)
{
#if PG_VERSION_NUM >= 150000
	return 0.8 + 0.4 * pg_prng_double(&pg_global_prng_state);
#else
	return 0.8 + 0.4 * ((double) random() / ((double) MAX_RANDOM_VALUE + 1));
#endif
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
		(webhook_retry_delays_ms[d->attempt - 1] * worker_jitter() * 1000.0);
	if ((d->status_code == 429 || d->status_code == 503) && d->retry_after_s >= 0)
	{
		TimestampTz asked = now + (TimestampTz)
			Min(d->retry_after_s, webhook_retry_after_max_s) * USECS_PER_SEC;

		d->next_attempt_at = Max(d->next_attempt_at, asked);
	}
}

/*
 * The transaction body of one pass: record, dispatch, fetch.
 */
typedef struct WorkerPass
{
	bool		dispatch;		/* look for newly committed events */
	bool		fetch;			/* fetch even if dispatch queues nothing */
	bool		check_ready;	/* look for the extension first */
	bool		ready;			/* the extension exists */
	int			fetch_limit;
	Delivery  **fetched;
	int			fetched_count;
} WorkerPass;

static void
worker_pass(void *arg)
{
	WorkerPass *pass = (WorkerPass *) arg;

	if (pass->check_ready)
	{
		pass->ready = queue_extension_ready();
		if (!pass->ready)
			return;
	}
	if (worker_done_count > 0)
		queue_record(worker_done, worker_done_count);
	if (pass->dispatch && queue_dispatch() > 0)
		pass->fetch = true;
	if (pass->fetch && pass->fetch_limit > 0)
	{
		/* Not to be fetched: what is in flight, ready or quarantined. */
		int			held_count = 0;
		Delivery  **held = palloc(sizeof(Delivery *) *
								  (worker_in_flight_count + worker_ready_count +
								   worker_quarantine_count + 1));

		memcpy(held + held_count, worker_in_flight, sizeof(Delivery *) * worker_in_flight_count);
		held_count += worker_in_flight_count;
		memcpy(held + held_count, worker_ready, sizeof(Delivery *) * worker_ready_count);
		held_count += worker_ready_count;
		memcpy(held + held_count, worker_quarantine, sizeof(Delivery *) * worker_quarantine_count);
		held_count += worker_quarantine_count;
		pass->fetched = queue_fetch(pass->fetch_limit,
									webhook_per_endpoint_concurrency * WORKER_PREFETCH,
									held, held_count, worker_positions, worker_position_count,
									&pass->fetched_count, worker_context);
	}
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
		if (worker_position_count == worker_position_capacity)
		{
			worker_position_capacity = Max(16, worker_position_capacity * 2);
			worker_positions = worker_positions == NULL ?
				MemoryContextAlloc(worker_context,
								   sizeof(QueuePosition) * worker_position_capacity) :
				repalloc(worker_positions, sizeof(QueuePosition) * worker_position_capacity);
		}
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
 * Record one outcome alone (after its batch failed to record).
 */
static void
worker_record_one(void *arg)
{
	queue_record((Delivery **) arg, 1);
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

	if (d->outcome != OUTCOME_RETRY || d->next_attempt_at < earliest)
		d->next_attempt_at = earliest;
	if (worker_quarantine_count == WORKER_QUARANTINE_MAX)
	{
		queue_free_delivery(worker_quarantine[0]);
		memmove(worker_quarantine, worker_quarantine + 1,
				sizeof(Delivery *) * --worker_quarantine_count);
	}
	worker_quarantine[worker_quarantine_count++] = d;
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
	{
		if (worker_quarantine[i]->next_attempt_at <= now)
			queue_free_delivery(worker_quarantine[i]);
		else
			worker_quarantine[kept++] = worker_quarantine[i];
	}
	if (kept < worker_quarantine_count)
		worker_position_count = 0;
	worker_quarantine_count = kept;
}

/*
 * Record each outcome of a batch that failed as a whole in a transaction of
 * its own, then without its response body. One that still cannot be
 * recorded is logged and quarantined: the batch is not sent again, and
 * neither is that delivery before its next try.
 */
static void
worker_record_separately(void)
{
	int			kept = 0;

	for (int i = 0; i < worker_done_count; i++)
	{
		Delivery   *d = worker_done[i];

		if (!worker_transaction(worker_record_one, &worker_done[i], "record a delivery outcome"))
		{
			d->response.len = 0;
			d->response.data[0] = '\0';
			if (!worker_transaction(worker_record_one, &worker_done[i],
									"record a delivery outcome without its response"))
			{
				ereport(WARNING,
						(errmsg("webhook_outbox worker could not record an attempt of event %s; it is not tried again for a minute or more",
								d->event_id_text)));
				worker_quarantine_add(d);
				continue;
			}
		}
		worker_done[kept++] = d;
	}
	worker_done_count = kept;
}

/*
 * Release the recorded deliveries.
 */
static void
worker_forget_done(void)
{
	for (int i = 0; i < worker_done_count; i++)
		queue_free_delivery(worker_done[i]);
	worker_done_count = 0;
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
 * ready deliveries were let go because their endpoint failed.
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
		if (d->outcome != OUTCOME_SUCCEEDED)
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
 * How many requests to an endpoint are in flight.
 */
static int
worker_endpoint_in_flight(const pg_uuid_t *endpoint)
{
	int			n = 0;

	for (int i = 0; i < worker_in_flight_count; i++)
		if (memcmp(&worker_in_flight[i]->endpoint_id, endpoint, sizeof(pg_uuid_t)) == 0)
			n++;
	return n;
}

/*
 * Start ready deliveries, oldest first, as far as the free slots and
 * webhook.endpoint_concurrency allow; the rest stay ready, in order.
 */
static void
worker_start_ready(void)
{
	int			free_slots;
	int			kept = 0;
	int			started = 0;

	if (worker_ready_count == 0)
		return;
	free_slots = worker_free_slots();
	for (int i = 0; i < worker_ready_count; i++)
	{
		Delivery   *d = worker_ready[i];

		if (started < free_slots &&
			worker_endpoint_in_flight(&d->endpoint_id) < webhook_per_endpoint_concurrency)
		{
			d->busy_us_at_start = worker_busy_us;
			worker_in_flight[worker_in_flight_count++] = d;
			http_start(d);
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
		 TimestampDifferenceExceeds(worker_done_since, now, WORKER_RECORD_DELAY_MS));
}

/*
 * Before exit: stop using the latch and curl.
 */
static void
worker_on_exit(int code, Datum arg)
{
	webhook_worker_detach();
	http_shutdown();
}

/*
 * Show what the worker is doing in pg_stat_activity.
 */
static void
worker_report_activity(bool ready)
{
	char		activity[128];

	if (!ready)
		snprintf(activity, sizeof(activity),
				 "waiting for CREATE EXTENSION webhook_outbox");
	else
		snprintf(activity, sizeof(activity), "delivering: %d in flight",
				 worker_in_flight_count);
	pgstat_report_activity(worker_in_flight_count > 0 ? STATE_RUNNING : STATE_IDLE, activity);
}

/*
 * Remove one batch of history older than webhook.retention.
 */
static void
worker_remove_batch(void *arg)
{
	*(int64 *) arg = queue_remove_old_history(WORKER_RETENTION_BATCH);
}

/*
 * Remove a batch; true while more old history may remain.
 */
static bool
worker_apply_retention(void)
{
	int64		removed = 0;

	return worker_transaction(worker_remove_batch, &removed, "remove old history") &&
		removed == WORKER_RETENTION_BATCH;
}

/*
 * The delivery worker's main loop.
 */
void
webhook_worker_main(Datum main_arg)
{
	Oid			database = DatumGetObjectId(main_arg);
	TimestampTz last_poll = 0;
	TimestampTz last_dispatch = 0;
	TimestampTz last_retention = 0;
	bool		retention_pending = false;
	bool		ready = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(database, InvalidOid, 0);

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

	worker_context = AllocSetContextCreate(TopMemoryContext, "webhook_outbox deliveries",
										   ALLOCSET_DEFAULT_SIZES);
	worker_capacity = 64;
	worker_in_flight = MemoryContextAlloc(worker_context, sizeof(Delivery *) * worker_capacity);
	worker_done = MemoryContextAlloc(worker_context, sizeof(Delivery *) * worker_capacity);
	worker_ready = MemoryContextAlloc(worker_context, sizeof(Delivery *) * worker_capacity);

	before_shmem_exit(worker_on_exit, (Datum) 0);
	http_init();
	webhook_worker_attach();
	worker_report_activity(false);

	while (!ShutdownRequestPending)
	{
		TimestampTz now;
		bool		poll_due;
		int			released;
		uint32		wake;
		WorkerPass	pass;
		long		timeout_ms;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			http_apply_settings();
		}

		released = worker_collect_completed();
		now = GetCurrentTimestamp();
		worker_start_ready();
		if (worker_in_flight_count == 0 && worker_done_count > 0)
			worker_report_activity(ready);

		worker_quarantine_expire(now);
		released += worker_release_ready(NULL, now - (TimestampTz) WORKER_READY_MAX_MS * 1000);
		poll_due = TimestampDifferenceExceeds(last_poll, now, webhook_poll_interval_ms);
		wake = now - last_dispatch >= WORKER_DISPATCH_GAP_US ? webhook_consume_wake() : 0;
		if ((wake & WEBHOOK_WAKE_RESCAN) || poll_due)
			worker_position_count = 0;

		/*
		 * Plan the worker's statements afresh at each poll. Their plans are
		 * kept (see queue.c), and a plan made while the queue tables were
		 * empty -- after CREATE EXTENSION, or after an ANALYZE of an idle
		 * queue -- reads whole tables once they have filled; the plan cache
		 * would only notice at the next ANALYZE.
		 */
		if (poll_due)
			ResetPlanCache();

		memset(&pass, 0, sizeof(pass));
		pass.check_ready = !ready || poll_due;
		pass.ready = ready;
		pass.dispatch = poll_due || (wake & WEBHOOK_WAKE_DISPATCH);
		pass.fetch = poll_due || (wake & WEBHOOK_WAKE_RESCAN) || worker_done_count > 0 ||
			released > 0;

		/*
		 * A pass is worth a transaction when there are new events, outcomes
		 * due to be recorded, or ready deliveries just let go to fetch again.
		 */
		if (pass.dispatch || worker_record_due(now) || released > 0)
		{
			pass.fetch_limit = Max(0, worker_free_slots() + http_max_in_flight() -
								   worker_ready_count);
			if (worker_transaction(worker_pass, &pass, "run a delivery pass"))
				worker_forget_done();
			else
			{
				/*
				 * Try again at the next poll, not at once (no loop of
				 * warnings), checking first that the extension still exists.
				 */
				pass.ready = false;
				last_poll = now;
				pass.fetched_count = 0;
				if (worker_done_count > 0)
				{
					worker_record_separately();
					worker_forget_done();
				}
			}
			if (pass.ready != ready)
			{
				ready = pass.ready;
				worker_report_activity(ready);
			}
			if (poll_due)
				last_poll = now;
			if (pass.dispatch)
				last_dispatch = now;
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
			pfree(pass.fetched);
			worker_start_ready();
		}

		if (ready && !retention_pending &&
			TimestampDifferenceExceeds(last_retention, now, WORKER_RETENTION_INTERVAL_MS))
			retention_pending = true;
		if (retention_pending &&
			TimestampDifferenceExceeds(last_retention, now, WORKER_RETENTION_PAUSE_MS))
		{
			retention_pending = ready && worker_apply_retention();
			last_retention = now;
		}

		/*
		 * Sleep until a commit, a socket, curl's timer, the next poll, or
		 * the moment outcomes are due to be recorded or ready deliveries
		 * to be let go.
		 */
		now = GetCurrentTimestamp();
		timeout_ms = webhook_poll_interval_ms - (long) ((now - last_poll) / 1000);
		if (retention_pending)
			timeout_ms = Min(timeout_ms, WORKER_RETENTION_PAUSE_MS);
		if (worker_done_count > 0)
			timeout_ms = Min(timeout_ms, WORKER_RECORD_DELAY_MS -
							 (long) ((now - worker_done_since) / 1000));
		if (worker_ready_count > 0)
			timeout_ms = Min(timeout_ms, WORKER_READY_MAX_MS -
							 (long) ((now - worker_ready[0]->fetched_at) / 1000));
		if (webhook_wake_pending())
			timeout_ms = Min(timeout_ms,
							 (WORKER_DISPATCH_GAP_US - (now - last_dispatch) + 999) / 1000);
		(void) http_wait(Max(timeout_ms, 0), PG_WAIT_EXTENSION);
		worker_listened_at = GetCurrentTimestamp();
	}

	/*
	 * SIGTERM: record what has finished; requests still in flight stay
	 * pending and are sent again after restart.
	 */
	worker_collect_completed();
	if (worker_done_count > 0)
	{
		WorkerPass	pass;

		memset(&pass, 0, sizeof(pass));
		pass.ready = ready;
		(void) worker_transaction(worker_pass, &pass, "record delivery outcomes");
	}
	proc_exit(1);
}
