/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		Which databases are served, and the launcher that starts a delivery
 *		worker for each of them.
 *
 * webhook.databases names the databases served ('*': every database that
 * accepts connections and is not a template). The launcher, a background
 * worker without a database, lists them from pg_database and starts a
 * worker (worker.c) for each one that has none. A worker that finds no
 * webhook_outbox installed in its database leaves at once and says so in
 * its slot (wakeup.c); the launcher then leaves that database alone until
 * the extension is created or updated somewhere (a ProcessUtility hook
 * wakes the launcher when that transaction commits), or
 * LAUNCHER_RECHECK_MS has passed. So no worker stays connected to a
 * database that does not use the extension.
 *
 * DROP DATABASE fails while anyone is connected to the database: a
 * ProcessUtility hook, in the backend that drops it, stops the database's
 * worker first and holds the launcher off while the drop runs.
 *
 * webhook.database, the one database of 0.1, still works: when set, it is
 * the only database served and webhook.databases is ignored (the launcher
 * says so in the log).
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
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/varlena.h"

#include <signal.h>

/* How soon a worker that stopped is started again. */
#define LAUNCHER_RELAUNCH_DELAY_MS 1000
/* How often the launcher lists the databases. */
#define LAUNCHER_SCAN_MS 5000
/* How long a database without the extension is left alone at most. */
#define LAUNCHER_RECHECK_MS (60 * 1000)
/* How long DROP DATABASE waits for the database's worker to leave. */
#define LAUNCHER_DROP_WAIT_MS 5000

PGDLLEXPORT void webhook_launcher_main(Datum main_arg);

#define LAUNCHER_MAX_WORKERS 64	/* webhook.workers' maximum */

/* What the launcher knows of a database it served or tried to. */
typedef struct LaunchedDatabase
{
	Oid			database;
	char		name[NAMEDATALEN];
	/* its workers; NULL: none started, or it stopped */
	BackgroundWorkerHandle *handles[LAUNCHER_MAX_WORKERS];
	int			workers;		/* the webhook.workers they were started for */
	bool		draining;		/* asked to leave, for a new webhook.workers */
	TimestampTz started_at;
	TimestampTz no_extension_at;	/* 0, or when its worker found none */
	bool		listed;			/* seen in the latest scan */
} LaunchedDatabase;

static LaunchedDatabase *launcher_databases = NULL;
static TimestampTz launcher_last_rescan = 0;	/* an extension was created */
static int	launcher_database_count = 0;
static int	launcher_database_capacity = 0;

static ProcessUtility_hook_type launcher_prev_utility_hook = NULL;

/*
 * The list webhook.databases (or webhook.database) names, as the parameter
 * text; "*" for every database.
 */
static bool
launcher_deprecated_setting(void)
{
	return webhook_database != NULL && webhook_database[0] != '\0';
}

const char *
webhook_served_databases(void)
{
	return launcher_deprecated_setting() ? webhook_database : webhook_databases;
}

/*
 * Whether the database called name is served: webhook.database when set,
 * else webhook.databases ("*" or a comma-separated list of names).
 */
bool
webhook_database_served(const char *name)
{
	char	   *list;
	List	   *names;
	ListCell   *cell;
	bool		served = false;

	if (launcher_deprecated_setting())
		return strcmp(webhook_database, name) == 0;
	if (webhook_databases == NULL)
		return false;
	if (strcmp(webhook_databases, "*") == 0)
		return true;
	list = pstrdup(webhook_databases);
	if (!SplitIdentifierString(list, ',', &names))
	{
		pfree(list);
		return false;			/* the check hook refuses such a list */
	}
	foreach(cell, names)
		if (strcmp((char *) lfirst(cell), name) == 0)
			served = true;
	list_free(names);
	pfree(list);
	return served;
}

/*
 * Check hook of webhook.databases: "*" or a list of database names.
 */
bool
webhook_check_databases(char **newval, void **extra, GucSource source)
{
	char	   *list;
	List	   *names;
	bool		ok;

	if (*newval == NULL || strcmp(*newval, "*") == 0)
		return true;
	list = pstrdup(*newval);
	ok = SplitIdentifierString(list, ',', &names);
	if (ok)
	{
		ListCell   *cell;

		foreach(cell, names)
			if (strcmp((char *) lfirst(cell), "*") == 0)
				ok = false;
		list_free(names);
	}
	pfree(list);
	if (!ok)
	{
		GUC_check_errdetail("webhook.databases is '*' or a comma-separated list of database names.");
		return false;
	}
	return true;
}

/*
 * Raise unless the current database is served: an event emitted here
 * would otherwise wait, unseen, for a worker that never comes. The answer
 * is kept until the parameter changes.
 */
void
webhook_require_served_database(void)
{
	static const char *checked_list = NULL;
	static bool served = false;
	const char *list = webhook_served_databases();

	if (list != checked_list)
	{
		char	   *name = get_database_name(MyDatabaseId);

		served = name != NULL && webhook_database_served(name);
		checked_list = list;
	}
	if (!served)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("database \"%s\" is not served by webhook_outbox",
						get_database_name(MyDatabaseId)),
				 errdetail("%s is '%s': no worker would deliver events emitted here.",
						   launcher_deprecated_setting() ? "webhook.database" : "webhook.databases",
						   list),
				 errhint("Add the database to webhook.databases (or set it to '*') in postgresql.conf and reload.")));
}

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
 * The launcher's entry for database, made if needed.
 */
static LaunchedDatabase *
launcher_entry(Oid database, const char *name)
{
	LaunchedDatabase *entry;

	for (int i = 0; i < launcher_database_count; i++)
		if (launcher_databases[i].database == database)
			return &launcher_databases[i];
	if (launcher_database_count == launcher_database_capacity)
	{
		launcher_database_capacity = Max(16, launcher_database_capacity * 2);
		launcher_databases = launcher_databases == NULL
			? MemoryContextAlloc(TopMemoryContext,
								 sizeof(LaunchedDatabase) * launcher_database_capacity)
			: repalloc(launcher_databases,
					   sizeof(LaunchedDatabase) * launcher_database_capacity);
	}
	entry = &launcher_databases[launcher_database_count++];
	memset(entry, 0, sizeof(*entry));
	entry->database = database;
	strlcpy(entry->name, name, NAMEDATALEN);
	return entry;
}

/*
 * Mark the databases served now as listed. The launcher has no database,
 * so it reads pg_database by a plain scan, as the autovacuum launcher does
 * (its indexes need a database's relcache). Templates are never served: a
 * connection to one would make CREATE DATABASE from it fail.
 */
static void
launcher_scan_databases(void)
{
	Relation	relation;
	TableScanDesc scan;
	HeapTuple	tuple;

	for (int i = 0; i < launcher_database_count; i++)
		launcher_databases[i].listed = false;
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	relation = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(relation, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tuple);

		if (db->datallowconn && !db->datistemplate &&
			webhook_database_served(NameStr(db->datname)))
			launcher_entry(db->oid, NameStr(db->datname))->listed = true;
	}
	table_endscan(scan);
	table_close(relation, AccessShareLock);
	CommitTransactionCommand();
}

/*
 * Start the delivery worker for a database; NULL if no slot was free.
 */
static BackgroundWorkerHandle *
launcher_start_worker(LaunchedDatabase *entry, int index, int count)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;	/* the launcher restarts it */
	worker.bgw_main_arg = ObjectIdGetDatum(entry->database);
	worker.bgw_notify_pid = MyProcPid;
	snprintf(worker.bgw_extra, BGW_EXTRALEN, "%d %d", index, count);
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "webhook_outbox");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "webhook_worker_main");
	if (count > 1)
		snprintf(worker.bgw_name, BGW_MAXLEN, "webhook_outbox worker %d of %d for \"%s\"",
				 index + 1, count, entry->name);
	else
		snprintf(worker.bgw_name, BGW_MAXLEN, "webhook_outbox worker for \"%s\"", entry->name);
	snprintf(worker.bgw_type, BGW_MAXLEN, "webhook_outbox worker");
	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		ereport(LOG,
				(errmsg("webhook_outbox could not start a delivery worker for database \"%s\"",
						entry->name),
				 errhint("Raise max_worker_processes: each database served takes one.")));
		return NULL;
	}
	return handle;
}

/*
 * One round of the launcher: note the workers that stopped and the
 * databases without the extension, stop the workers of databases no longer
 * served, start those missing. Returns how soon to look again.
 */
static long
launcher_round(bool scan, bool rescan)
{
	TimestampTz now = GetCurrentTimestamp();
	long		wait_ms = LAUNCHER_SCAN_MS;
	Oid			without[64];
	int			count;

	if (rescan)
		launcher_last_rescan = now;

	/*
	 * A worker that found no extension: leave its database alone, unless
	 * an extension was created since that worker started (it may have
	 * looked just before that commit): then it is started again.
	 */
	while ((count = webhook_launcher_take_no_extension(without, lengthof(without))) > 0)
		for (int i = 0; i < count; i++)
			for (int j = 0; j < launcher_database_count; j++)
			{
				LaunchedDatabase *entry = &launcher_databases[j];

				if (entry->database != without[i])
					continue;
				if (launcher_last_rescan < entry->started_at)
					entry->no_extension_at = now;
				else
					entry->started_at = 0;	/* it left in good order: at once */
			}
	if (scan)
		launcher_scan_databases();

	for (int i = 0; i < launcher_database_count; i++)
	{
		LaunchedDatabase *entry = &launcher_databases[i];
		int			wanted = Min(webhook_workers, LAUNCHER_MAX_WORKERS);
		int			running = 0;
		long		since_ms;

		for (int w = 0; w < LAUNCHER_MAX_WORKERS; w++)
		{
			pid_t		pid;

			if (entry->handles[w] != NULL &&
				GetBackgroundWorkerPid(entry->handles[w], &pid) == BGWH_STOPPED)
			{
				pfree(entry->handles[w]);
				entry->handles[w] = NULL;
			}
			if (entry->handles[w] != NULL)
				running++;
		}
		if (!entry->listed)
		{
			/* no longer served (or gone): stop its workers */
			for (int w = 0; w < LAUNCHER_MAX_WORKERS; w++)
				if (entry->handles[w] != NULL)
					TerminateBackgroundWorker(entry->handles[w]);
			continue;
		}

		/*
		 * webhook.workers changed: the workers finish what they have and
		 * leave, and only then does the new set start, so that no endpoint
		 * is ever served by two workers at once.
		 */
		if (running > 0 && entry->workers != wanted && !entry->draining)
		{
			webhook_drain_database(entry->database);
			entry->draining = true;
		}
		if (entry->draining)
		{
			if (running > 0)
				continue;
			entry->draining = false;
			entry->started_at = 0;
		}
		if (running == wanted)
			continue;
		if (rescan)
			entry->no_extension_at = 0;
		if (entry->no_extension_at != 0 &&
			!TimestampDifferenceExceeds(entry->no_extension_at, now, LAUNCHER_RECHECK_MS))
			continue;
		since_ms = (long) ((now - entry->started_at) / 1000);
		if (since_ms < LAUNCHER_RELAUNCH_DELAY_MS)
		{
			wait_ms = Min(wait_ms, LAUNCHER_RELAUNCH_DELAY_MS - since_ms);
			continue;
		}
		if (!webhook_test_launch_workers || webhook_database_held(entry->database, now))
			continue;
		for (int w = 0; w < wanted; w++)
		{
			/*
			 * A worker may still serve the database without a handle of
			 * ours: one a previous launcher started before it died. Start
			 * none beside it.
			 */
			if (entry->handles[w] != NULL || webhook_worker_pid(entry->database, w) != 0)
				continue;
			entry->handles[w] = launcher_start_worker(entry, w, wanted);
		}
		entry->workers = wanted;
		entry->started_at = now;
		entry->no_extension_at = 0;
	}
	return wait_ms;
}

/*
 * The launcher's main loop.
 */
void
webhook_launcher_main(Datum main_arg)
{
	TimestampTz last_scan = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	webhook_launcher_attach();
	pgstat_report_activity(STATE_IDLE, "serving databases");
	if (launcher_deprecated_setting())
		ereport(LOG,
				(errmsg("webhook_outbox serves database \"%s\" alone: webhook.database is set",
						webhook_database),
				 errhint("webhook.database is deprecated; set webhook.databases instead (default '*', every database with the extension).")));

	while (!ShutdownRequestPending)
	{
		bool		rescan;
		bool		scan;
		long		wait_ms;

		CHECK_FOR_INTERRUPTS();
		scan = false;
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			scan = true;
		}
		rescan = webhook_launcher_consume_rescan();
		scan = scan || rescan ||
			TimestampDifferenceExceeds(last_scan, GetCurrentTimestamp(), LAUNCHER_SCAN_MS);
		if (scan)
			last_scan = GetCurrentTimestamp();
		wait_ms = launcher_round(scan, rescan);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	for (int i = 0; i < launcher_database_count; i++)
		for (int w = 0; w < LAUNCHER_MAX_WORKERS; w++)
			if (launcher_databases[i].handles[w] != NULL)
				TerminateBackgroundWorker(launcher_databases[i].handles[w]);
	proc_exit(1);
}

/*
 * Before DROP DATABASE (or ALTER DATABASE ... RENAME / SET TABLESPACE,
 * which also need the database to themselves): hold the launcher off the
 * database for a while and stop its worker, waiting until it has left.
 * Were the drop to fail, the worker is started again once the hold ends.
 */
static void
launcher_release_database(const char *name)
{
	Oid			database = get_database_oid(name, true);
	pid_t		pid;
	TimestampTz deadline;

	if (!OidIsValid(database))
		return;
	webhook_hold_database(database, TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																 LAUNCHER_DROP_WAIT_MS * 2));
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), LAUNCHER_DROP_WAIT_MS);
	while ((pid = webhook_worker_pid(database, -1)) != 0 && GetCurrentTimestamp() < deadline)
	{
		(void) kill(pid, SIGTERM);	/* each of its workers, in turn */
		CHECK_FOR_INTERRUPTS();
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

static void
launcher_utility_hook(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					  ProcessUtilityContext context, ParamListInfo params,
					  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *statement = pstmt->utilityStmt;

	if (IsA(statement, CreateExtensionStmt) &&
		strcmp(((CreateExtensionStmt *) statement)->extname, "webhook_outbox") == 0)
		webhook_rescan_at_commit();
	else if (IsA(statement, AlterExtensionStmt) &&
			 strcmp(((AlterExtensionStmt *) statement)->extname, "webhook_outbox") == 0)
		webhook_rescan_at_commit();
	else if (IsA(statement, DropdbStmt))
		launcher_release_database(((DropdbStmt *) statement)->dbname);
	else if (IsA(statement, AlterDatabaseStmt))
	{
		ListCell   *cell;

		foreach(cell, ((AlterDatabaseStmt *) statement)->options)
			if (strcmp(((DefElem *) lfirst(cell))->defname, "tablespace") == 0)
				launcher_release_database(((AlterDatabaseStmt *) statement)->dbname);
	}
	else if (IsA(statement, RenameStmt) &&
			 ((RenameStmt *) statement)->renameType == OBJECT_DATABASE)
		launcher_release_database(((RenameStmt *) statement)->subname);

	if (launcher_prev_utility_hook)
		launcher_prev_utility_hook(pstmt, queryString, readOnlyTree, context, params,
								   queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);

	/*
	 * A prepared transaction that created the extension (Citus propagates
	 * CREATE EXTENSION to its worker nodes so) asked for no rescan: its
	 * commit came later, here.  If this database now has the extension and
	 * no worker, have the launcher look again.
	 */
	if (IsA(statement, TransactionStmt) &&
		((TransactionStmt *) statement)->kind == TRANS_STMT_COMMIT_PREPARED &&
		webhook_worker_pid(MyDatabaseId, -1) == 0 &&
		OidIsValid(get_extension_oid("webhook_outbox", true)))
		webhook_rescan_at_commit();
}

/*
 * Install the hook (from _PG_init).
 */
void
webhook_install_utility_hook(void)
{
	launcher_prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = launcher_utility_hook;
}
