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
 *   in one short transaction: record those outcomes, dispatch events that
 *   committed since the last pass, fetch due deliveries for the free slots;
 *   after commit, hand the fetched deliveries to curl;
 *   sleep on the latch and curl's sockets together.
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

PGDLLEXPORT void webhook_launcher_main(Datum main_arg);

/* The delivery worker's state */
static MemoryContext worker_context = NULL;
static Delivery **worker_in_flight = NULL;
static int	worker_in_flight_count = 0;
static Delivery **worker_done = NULL;
static int	worker_done_count = 0;
static int	worker_capacity = 0;

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
	bool		check_ready;	/* look for the extension first */
	bool		ready;			/* the extension exists */
	int			free_slots;
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
	if (pass->dispatch)
		queue_dispatch();
	if (pass->free_slots > 0)
	{
		/* Not to be fetched: what is in flight, and what is quarantined. */
		worker_reserve(worker_quarantine_count);
		memcpy(worker_in_flight + worker_in_flight_count, worker_quarantine,
			   sizeof(Delivery *) * worker_quarantine_count);
		pass->fetched = queue_fetch(pass->free_slots, worker_in_flight,
									worker_in_flight_count + worker_quarantine_count,
									&pass->fetched_count, worker_context);
	}
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
 * take them again.
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
 * Make room for n more deliveries in the in-flight and done arrays.
 */
static void
worker_reserve(int n)
{
	int			needed = Max(worker_in_flight_count, worker_done_count) + n;

	if (needed <= worker_capacity)
		return;
	worker_capacity = Max(needed, worker_capacity * 2);
	worker_in_flight = repalloc(worker_in_flight, sizeof(Delivery *) * worker_capacity);
	worker_done = repalloc(worker_done, sizeof(Delivery *) * worker_capacity);
}

/*
 * Move finished requests from in flight to done, judged.
 */
static void
worker_collect_completed(void)
{
	Delivery   *d;

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
		worker_done[worker_done_count++] = d;
	}
}

/*
 * How many more requests may start. Requests waiting longer than
 * WORKER_STALLED_MS for their answer stop counting against
 * webhook.concurrency, up to as many again: endpoints that hang cannot
 * take every slot before they are known to be failing (after which
 * due_deliveries gives each of them one request at a time).
 */
static int
worker_free_slots(TimestampTz now)
{
	int			limit = http_max_in_flight();
	int			stalled = 0;

	for (int i = 0; i < worker_in_flight_count; i++)
		if (TimestampDifferenceExceeds(worker_in_flight[i]->started_at, now, WORKER_STALLED_MS))
			stalled++;
	return Max(0, Min(limit - (worker_in_flight_count - stalled),
					  2 * limit - worker_in_flight_count));
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

	worker_context = AllocSetContextCreate(TopMemoryContext, "webhook_outbox deliveries",
										   ALLOCSET_DEFAULT_SIZES);
	worker_capacity = 64;
	worker_in_flight = MemoryContextAlloc(worker_context, sizeof(Delivery *) * worker_capacity);
	worker_done = MemoryContextAlloc(worker_context, sizeof(Delivery *) * worker_capacity);

	before_shmem_exit(worker_on_exit, (Datum) 0);
	http_init();
	webhook_worker_attach();
	worker_report_activity(false);

	while (!ShutdownRequestPending)
	{
		TimestampTz now;
		bool		poll_due;
		bool		woken;
		WorkerPass	pass;
		long		timeout_ms;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			http_apply_settings();
		}

		worker_collect_completed();
		if (worker_in_flight_count == 0 && worker_done_count > 0)
			worker_report_activity(ready);

		now = GetCurrentTimestamp();
		worker_quarantine_expire(now);
		poll_due = TimestampDifferenceExceeds(last_poll, now, webhook_poll_interval_ms);
		woken = webhook_consume_wake();

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
		pass.dispatch = woken || poll_due;
		pass.free_slots = worker_free_slots(now);

		/*
		 * A pass is worth a transaction when there are outcomes to record,
		 * or new events, or free slots and a reason to look for due work.
		 */
		if (worker_done_count > 0 || pass.dispatch)
		{
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
		}

		/* After commit: hand the fetched deliveries to curl. */
		worker_reserve(pass.fetched_count);
		for (int i = 0; i < pass.fetched_count; i++)
		{
			worker_in_flight[worker_in_flight_count++] = pass.fetched[i];
			http_start(pass.fetched[i]);
		}
		if (pass.fetched_count > 0)
		{
			pfree(pass.fetched);
			worker_report_activity(ready);
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

		/* Sleep until a commit, a socket, curl's timer or the next poll. */
		timeout_ms = webhook_poll_interval_ms -
			(long) ((GetCurrentTimestamp() - last_poll) / 1000);
		if (retention_pending)
			timeout_ms = Min(timeout_ms, WORKER_RETENTION_PAUSE_MS);
		(void) http_wait(Max(timeout_ms, 0), PG_WAIT_EXTENSION);
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
