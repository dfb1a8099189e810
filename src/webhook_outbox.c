/*-------------------------------------------------------------------------
 *
 * webhook_outbox.c
 *		Module entry point: the webhook.* parameters and, when the library
 *		is preloaded, shared memory and the delivery worker.
 *
 *-------------------------------------------------------------------------
 */
#include "webhook_outbox.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include <errno.h>
#include <limits.h>

PG_MODULE_MAGIC;

char	   *webhook_database = NULL;
char	   *webhook_databases = NULL;
int			webhook_workers = 1;
bool		webhook_test_launch_workers = true;
char	   *webhook_tenant = NULL;
int			webhook_concurrency = 64;
int			webhook_per_endpoint_concurrency = 16;
int			webhook_timeout_ms = 15000;
char	   *webhook_retry_schedule = NULL;
int			webhook_disable_after_s = 5 * 24 * 3600;
bool		webhook_allow_private_networks = false;
char	   *webhook_allowed_networks = NULL;
char	   *webhook_proxy = NULL;
char	   *webhook_ca_file = NULL;
int			webhook_max_response_body = 4096;
int			webhook_max_payload_size = 1024 * 1024;
int			webhook_retention_s = 30 * 24 * 3600;
int			webhook_poll_interval_ms = 1000;
int			webhook_retry_after_max_s = 3600;
char	   *webhook_test_fail_start_url = NULL;

int			webhook_retry_delays_ms[WEBHOOK_MAX_RETRIES];
int			webhook_retry_count = 0;

/* The parsed form of webhook.retry_schedule, kept as the GUC's "extra". */
typedef struct RetrySchedule
{
	int			count;
	int			delays_ms[WEBHOOK_MAX_RETRIES];
} RetrySchedule;

void		_PG_init(void);

/*
 * Parse one duration of the retry schedule: a whole number and a unit, one
 * of ms, s, m or min, h, d ("5m" as the contract's default writes it, which
 * PostgreSQL's own unit parser would not take).
 */
static bool
guc_parse_delay(const char *item, int *delay_ms)
{
	static const struct
	{
		const char *unit;
		int64		ms;
	}			units[] = {
		{"ms", 1}, {"s", 1000}, {"m", 60000}, {"min", 60000},
		{"h", 3600000}, {"d", 86400000}
	};
	char	   *end;
	long		number;

	errno = 0;
	number = strtol(item, &end, 10);
	if (end == item || errno != 0 || number < 0)
		return false;
	while (*end == ' ')
		end++;
	for (int i = 0; i < (int) lengthof(units); i++)
	{
		size_t		len = strlen(units[i].unit);

		if (strncmp(end, units[i].unit, len) == 0 &&
			(end[len] == '\0' || end[len] == ' ') &&
			number <= INT_MAX / units[i].ms)
		{
			*delay_ms = (int) (number * units[i].ms);
			return true;
		}
	}
	return false;
}

/*
 * Parse a comma-separated list of durations ("5s,5m,30m") into delays.
 */
static bool
guc_check_retry_schedule(char **newval, void **extra, GucSource source)
{
	RetrySchedule *schedule;
	char	   *copy;
	char	   *item;
	char	   *saveptr = NULL;

	/* GUC "extra" data lives outside memory contexts: plain malloc */
	schedule = malloc(sizeof(RetrySchedule));
	if (schedule == NULL)
		return false;
	schedule->count = 0;

	copy = pstrdup(*newval);
	for (item = strtok_r(copy, ",", &saveptr); item != NULL;
		 item = strtok_r(NULL, ",", &saveptr))
	{
		int			delay_ms;

		while (*item == ' ')
			item++;
		if (schedule->count >= WEBHOOK_MAX_RETRIES)
		{
			GUC_check_errdetail("A retry schedule has at most %d entries.",
								WEBHOOK_MAX_RETRIES);
			goto fail;
		}
		if (!guc_parse_delay(item, &delay_ms))
		{
			GUC_check_errdetail("\"%s\" is not a duration such as \"500ms\", \"5s\", \"5m\", \"2h\" or \"1d\".",
								item);
			goto fail;
		}
		schedule->delays_ms[schedule->count++] = delay_ms;
	}
	pfree(copy);
	*extra = schedule;
	return true;

fail:
	pfree(copy);
	free(schedule);
	return false;
}

static void
guc_assign_retry_schedule(const char *newval, void *extra)
{
	RetrySchedule *schedule = (RetrySchedule *) extra;

	webhook_retry_count = schedule->count;
	memcpy(webhook_retry_delays_ms, schedule->delays_ms,
		   sizeof(int) * schedule->count);
}

/*
 * Refuse to be loaded anywhere but from shared_preload_libraries; true when
 * preloaded.  Loaded later, by CREATE EXTENSION or LOAD in an ordinary
 * session, defining the PGC_POSTMASTER parameter webhook.database would end
 * the session with a FATAL, and the shared memory and worker the library
 * needs could not exist anyway.  An ERROR raised here aborts only the
 * statement: CREATE EXTENSION rolls back whole, and since a library whose
 * _PG_init fails is not marked loaded, every later attempt meets the same
 * ERROR.  pg_upgrade loads each library into the new cluster whether it is
 * preloaded there or not, so in binary-upgrade mode this only warns and
 * returns false, and the caller defines nothing.
 */
static bool
guc_require_preload(void)
{
	if (process_shared_preload_libraries_in_progress)
		return true;

	ereport(IsBinaryUpgrade ? WARNING : ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("webhook_outbox must be loaded via shared_preload_libraries"),
			 errdetail("The delivery worker and its shared memory are set up only at server start."),
			 errhint("Add \"webhook_outbox\" to shared_preload_libraries in postgresql.conf and restart the server.")));
	return false;
}

/*
 * Define the webhook.* parameters, ask for shared memory and register the
 * delivery worker; outside shared_preload_libraries, refuse instead.
 */
void
_PG_init(void)
{
	/* first, before anything is defined that a refusal would leave behind */
	if (!guc_require_preload())
		return;

	DefineCustomStringVariable("webhook.databases",
							   "Databases served by delivery workers.",
							   "'*' means every database with the extension installed; else a comma-separated list of names.",
							   &webhook_databases, "*",
							   PGC_SIGHUP, GUC_LIST_INPUT, webhook_check_databases, NULL, NULL);
	DefineCustomIntVariable("webhook.workers",
							"Delivery workers per database, sharing its endpoints.",
							"Each endpoint is delivered by one of them; a change drains the database's workers and starts the new number.",
							&webhook_workers, 1, 1, 64,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("webhook.database",
							   "Deprecated (0.1): when set, the one database served; webhook.databases is then ignored.",
							   NULL, &webhook_database, "",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	/* for tests whose expected output must not change under a worker */
	DefineCustomBoolVariable("webhook.test_launch_workers",
							 "Whether the launcher starts delivery workers (for tests).",
							 NULL, &webhook_test_launch_workers, true,
							 PGC_SIGHUP, GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							 NULL, NULL, NULL);
	DefineCustomStringVariable("webhook.tenant",
							   "Tenant that this session emits for and is scoped to.",
							   "Empty means no tenant: every tenant's rows are in scope.",
							   &webhook_tenant, "",
							   PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("webhook.concurrency",
							"HTTP requests in flight at once.",
							NULL, &webhook_concurrency, 64, 1, 4096,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("webhook.endpoint_concurrency",
							"HTTP requests in flight at once to one endpoint.",
							"Keeps one slow endpoint from taking every slot.",
							&webhook_per_endpoint_concurrency, 16, 1, 4096,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("webhook.timeout",
							"Whole-request timeout of a delivery.",
							NULL, &webhook_timeout_ms, 15000, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomStringVariable("webhook.retry_schedule",
							   "Delays between delivery attempts.",
							   "A comma-separated list of durations; a delivery is tried once more than it has entries.",
							   &webhook_retry_schedule, "5s,5m,30m,2h,5h,10h,10h",
							   PGC_SIGHUP, 0, guc_check_retry_schedule,
							   guc_assign_retry_schedule, NULL);
	DefineCustomIntVariable("webhook.disable_after",
							"Continuous failure after which an endpoint is disabled.",
							NULL, &webhook_disable_after_s, 5 * 24 * 3600, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomBoolVariable("webhook.allow_private_networks",
							 "Deliver to loopback, private and link-local addresses.",
							 NULL, &webhook_allow_private_networks, false,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("webhook.allowed_networks",
							   "Address ranges (CIDR) delivered to even though private.",
							   "A list such as '10.1.0.0/16, fd00::/8'.",
							   &webhook_allowed_networks, "",
							   PGC_SIGHUP, 0, address_check_allowed_networks,
							   address_assign_allowed_networks, NULL);
	/* superuser only: a proxy URL may carry a password */
	DefineCustomStringVariable("webhook.proxy",
							   "HTTP proxy for deliveries; empty means none, whatever the environment says.",
							   NULL, &webhook_proxy, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("webhook.ca_file",
							   "File of CA certificates trusted for https deliveries; empty means the system's.",
							   NULL, &webhook_ca_file, "",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("webhook.max_response_body",
							"Response bytes kept in delivery history.",
							NULL, &webhook_max_response_body, 4096, 0, 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomIntVariable("webhook.max_payload_size",
							"Largest payload webhook.emit accepts.",
							NULL, &webhook_max_payload_size, 1024 * 1024, 1, 256 * 1024 * 1024,
							PGC_SUSET, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomIntVariable("webhook.retention",
							"How long delivered history is kept.",
							NULL, &webhook_retention_s, 30 * 24 * 3600, 60, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("webhook.poll_interval",
							"Longest the worker sleeps without being woken.",
							"Covers two-phase commits, which do not wake the worker.",
							&webhook_poll_interval_ms, 1000, 10, 60 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("webhook.retry_after_max",
							"Longest Retry-After a receiver can impose.",
							NULL, &webhook_retry_after_max_s, 3600, 0, 7 * 24 * 3600,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);

	/*
	 * Fault injection for the tests: starting a delivery whose URL contains
	 * this string fails with an ERROR (test/t/047_start_failure.pl).
	 */
	DefineCustomStringVariable("webhook.test_fail_start_url",
							   "Test only: fail the start of deliveries to URLs containing this.",
							   NULL, &webhook_test_fail_start_url, "",
							   PGC_SUSET, GUC_NOT_IN_SAMPLE | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);

	MarkGUCPrefixReserved("webhook");

	webhook_shmem_request();
	webhook_install_utility_hook();

	/*
	 * PostgreSQL 15 starts background workers under pg_upgrade too: no
	 * delivery may happen from a cluster being upgraded.
	 */
	if (!IsBinaryUpgrade)
		webhook_register_worker();
}
