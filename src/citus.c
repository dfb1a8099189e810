/*-------------------------------------------------------------------------
 *
 * citus.c
 *		Running on a Citus cluster: the endpoint catalog copied from the
 *		coordinator to every worker node, inside the transaction that
 *		changes it.
 *
 * On a Citus cluster each node delivers the events recorded on it (emit on
 * the coordinator, triggers on shards and distributed functions on the
 * worker nodes), so every node needs the endpoints and event types.  The
 * coordinator owns them: a row trigger on webhook.endpoints and
 * webhook.event_types sends each change to the worker nodes as a call of
 * webhook.apply_catalog_change, through Citus's own transactional command
 * propagation (the one that propagates DDL).  That joins the change to the
 * coordinated transaction: the nodes commit it with two-phase commit, or
 * none does.  A node that cannot be reached makes the change fail, as it
 * makes DDL fail.
 *
 * Citus is never linked: its functions are looked up in citus.so, which a
 * database with the citus extension has loaded (Citus must be preloaded).
 * Without Citus every function here does nothing.
 *
 * Each node's delivery worker keeps its own delivery state (failing_since,
 * breaker and expiry): its own changes to webhook.endpoints are not sent.
 *
 *-------------------------------------------------------------------------
 */
#include "webhook_outbox.h"

#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

/* Citus's functions this file calls; see citus_lookup. */
typedef bool (*citus_bool_fn) (void);
typedef List *(*citus_node_list_fn) (LOCKMODE lockMode);
typedef void (*citus_send_fn) (const char *command);

static struct
{
	bool		looked_up;
	citus_bool_fn is_coordinator;	/* IsCoordinator */
	citus_node_list_fn worker_nodes;	/* ActivePrimaryNonCoordinatorNodeList */
	citus_send_fn send_to_workers;	/* SendCommandToWorkersWithMetadata */
} citus_api;

/* > 0 while webhook.apply_catalog_change applies a coordinator's change */
static int	citus_applying = 0;

/*
 * Whether this database has the citus extension; if so, look up the Citus
 * functions we call (once per backend).
 */
static bool
citus_lookup(void)
{
	if (!OidIsValid(get_extension_oid("citus", true)))
		return false;
	if (!citus_api.looked_up)
	{
		citus_api.is_coordinator = (citus_bool_fn)
			load_external_function("citus", "IsCoordinator", true, NULL);
		citus_api.worker_nodes = (citus_node_list_fn)
			load_external_function("citus", "ActivePrimaryNonCoordinatorNodeList", true, NULL);
		citus_api.send_to_workers = (citus_send_fn)
			load_external_function("citus", "SendCommandToWorkersWithMetadata", true, NULL);
		citus_api.looked_up = true;
	}
	if (citus_api.is_coordinator == NULL || citus_api.worker_nodes == NULL ||
		citus_api.send_to_workers == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("this version of Citus is not supported by webhook_outbox"),
				 errdetail("Citus's command propagation functions were not found in citus.so."),
				 errhint("webhook_outbox is tested with Citus 13.2.")));
	return true;
}

/*
 * Send command to every worker node in the current coordinated transaction.
 * It carries endpoint secrets: Citus's logging of remote commands is off
 * while it is sent, whatever the session set.
 */
static void
citus_send_quietly(const char *command)
{
	int			nest_level = NewGUCNestLevel();

	if (GetConfigOption("citus.log_remote_commands", true, false) != NULL)
		(void) set_config_option("citus.log_remote_commands", "off",
								 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_SAVE,
								 true, 0, false);
	citus_api.send_to_workers(command);
	AtEOXact_GUC(true, nest_level);
}

/*
 * Trigger on webhook.endpoints and webhook.event_types (AFTER, each row):
 * on a Citus coordinator, apply the change on every worker node in the same
 * transaction.  On a worker node, refuse a change that does not come from
 * the coordinator: it would reach that node alone.
 */
PG_FUNCTION_INFO_V1(webhook_propagate_catalog_change);
Datum
webhook_propagate_catalog_change(PG_FUNCTION_ARGS)
{
	TriggerData *trigger = (TriggerData *) fcinfo->context;
	HeapTuple	row;
	Datum		row_json;
	StringInfoData command;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(trigger->tg_event))
		elog(ERROR, "webhook_propagate_catalog_change: not called as a row trigger");

	/*
	 * The coordinator's own change arriving, a node's worker's state, or an
	 * extension script (Citus runs CREATE and ALTER EXTENSION on every node
	 * itself): nothing to send, nothing to refuse.
	 */
	if (citus_applying > 0 || IsBackgroundWorker || creating_extension || !citus_lookup())
		return PointerGetDatum(NULL);

	if (!citus_api.is_coordinator())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("webhook endpoints and event types are managed on the Citus coordinator"),
				 errdetail("This is a worker node: a change made here would reach this node alone."),
				 errhint("Call the webhook management functions on the coordinator.")));

	if (list_length(citus_api.worker_nodes(NoLock)) == 0)
		return PointerGetDatum(NULL);

	row = TRIGGER_FIRED_BY_UPDATE(trigger->tg_event) ? trigger->tg_newtuple
		: trigger->tg_trigtuple;
	row_json = DirectFunctionCall1(row_to_json,
								   heap_copy_tuple_as_datum(row, RelationGetDescr(trigger->tg_relation)));

	initStringInfo(&command);
	appendStringInfo(&command,
					 "SELECT webhook.apply_catalog_change(%s, %s, %s::jsonb)",
					 quote_literal_cstr(RelationGetRelationName(trigger->tg_relation)),
					 quote_literal_cstr(TRIGGER_FIRED_BY_DELETE(trigger->tg_event) ? "DELETE"
										: "UPSERT"),
					 quote_literal_cstr(text_to_cstring(DatumGetTextPP(row_json))));
	citus_send_quietly(command.data);
	pfree(command.data);

	return PointerGetDatum(NULL);
}

/*
 * Run one statement of SQL with a text argument array; for the functions
 * below, which call the SQL that does the work.
 */
static void
citus_run(const char *sql, int nargs, Oid *types, Datum *values)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0) < 0)
		elog(ERROR, "could not run \"%s\"", sql);
	SPI_finish();
}

/*
 * webhook.apply_catalog_change(relation, operation, row): on a worker node,
 * apply a change the coordinator made (webhook.apply_catalog_row does it);
 * the catalog trigger lets it through.
 */
PG_FUNCTION_INFO_V1(webhook_apply_catalog_change);
Datum
webhook_apply_catalog_change(PG_FUNCTION_ARGS)
{
	Oid			types[3] = {TEXTOID, TEXTOID, JSONBOID};
	Datum		values[3];

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("relation, operation and row must not be null")));
	values[0] = PG_GETARG_DATUM(0);
	values[1] = PG_GETARG_DATUM(1);
	values[2] = PG_GETARG_DATUM(2);

	citus_applying++;
	PG_TRY();
	{
		citus_run("SELECT webhook.apply_catalog_row($1, $2, $3)", 3, types, values);
	}
	PG_FINALLY();
	{
		citus_applying--;
	}
	PG_END_TRY();
	PG_RETURN_VOID();
}

/*
 * webhook.sync_catalog_to_nodes(): on a Citus coordinator, make every
 * worker node's catalog the coordinator's (after citus_add_node, or to
 * repair); returns how many worker nodes it sent it to.
 */
PG_FUNCTION_INFO_V1(webhook_sync_catalog_to_nodes);
Datum
webhook_sync_catalog_to_nodes(PG_FUNCTION_ARGS)
{
	int			nodes;
	char	   *catalog;
	MemoryContext caller = CurrentMemoryContext;
	StringInfoData command;

	if (!citus_lookup())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the citus extension is not installed in this database")));
	if (!citus_api.is_coordinator())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("webhook endpoints and event types are managed on the Citus coordinator"),
				 errhint("Call webhook.sync_catalog_to_nodes() on the coordinator.")));

	nodes = list_length(citus_api.worker_nodes(NoLock));
	if (nodes == 0)
		PG_RETURN_INT32(0);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT webhook.catalog_snapshot()::text", true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read the webhook catalog");
	catalog = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	catalog = MemoryContextStrdup(caller, catalog);
	SPI_finish();

	initStringInfo(&command);
	appendStringInfo(&command,
					 "SELECT webhook.apply_catalog_change('catalog', 'REPLACE', %s::jsonb)",
					 quote_literal_cstr(catalog));
	citus_send_quietly(command.data);
	pfree(command.data);
	pfree(catalog);

	PG_RETURN_INT32(nodes);
}
