/*-------------------------------------------------------------------------
 *
 * emit.c
 *		webhook.emit and webhook.emit_trigger: record an event in the
 *		caller's transaction.
 *
 * Emitting is one INSERT into webhook.event_log, guarded by look-ups in the
 * catalog and the dispatch cursor: no counter row, no lock shared between emitters, no NOTIFY. The
 * row carries the emitting transaction's id so that the worker can find it
 * once it commits, however late (see queue.c). A transaction callback wakes
 * the worker at commit (wakeup.c); a rolled-back event is never seen.
 *
 * One library serves two schemas: a database still on 0.1 (the library
 * updated, ALTER EXTENSION UPDATE not run yet) declares emit with two
 * arguments and emit_trigger SECURITY DEFINER; 0.2 declares emit with five
 * and emit_trigger SECURITY INVOKER. Each gets the insert its event_log
 * takes.
 *
 * Rights: nothing a caller controls runs as the extension's owner. emit's
 * arguments are values. emit_trigger turns the row into JSON (output
 * functions and casts of the row's types, which whoever owns those types
 * wrote) with the rights of the role that fired it, and raises rights only
 * around the insert, which is fully schema-qualified.
 *
 *-------------------------------------------------------------------------
 */
#include "webhook_outbox.h"

#include "access/htup_details.h"
#include "access/xlog.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"


#define EMIT_UNIX_EPOCH_OFFSET_US \
	((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY)

/* Longest ordering or idempotency key, in characters. */
#define EMIT_MAX_KEY_LENGTH 255

/*
 * The statements of emit, each prepared once per backend (a generic plan:
 * none has a choice to make by value) and kept. Every name is schema-
 * qualified and every operator written OPERATOR(pg_catalog.=), so that
 * nothing resolves through a search_path.
 */
typedef enum EmitStatement
{
	EMIT_INSERT_0_1,			/* the 0.1 event_log */
	EMIT_INSERT_0_2,			/* the 0.2 event_log, with an idempotency key */
	EMIT_INSERT_0_2_NO_KEY,		/* the 0.2 event_log, without one */
	EMIT_FIND_KEY,				/* the event holding (tenant, key) */
	EMIT_FIND_KEY_NO_TENANT,	/* the event holding (NULL, key) */
	EMIT_STATEMENT_COUNT
} EmitStatement;

/*
 * The 0.2 insert: refused while a dispatch cursor of another server or
 * database remains (the outbox was restored from elsewhere and the worker
 * has not re-based it yet: a new event could be confused with the restored
 * ones), and when the event type is not in the catalog.
 */
#define EMIT_INSERT_0_2_SQL \
	"INSERT INTO webhook.event_log (id, event_type, payload, created_at, txid, " \
	"tenant, ordering_key, idempotency_key) " \
	"SELECT $1, $2, $3, $4, pg_catalog.pg_current_xact_id(), $5, $6, $7 " \
	"WHERE EXISTS (SELECT 1 FROM webhook.event_types t " \
	"WHERE t.name OPERATOR(pg_catalog.=) $2) " \
	"AND NOT EXISTS (SELECT 1 FROM webhook.dispatch_cursor c " \
	"WHERE NOT (c.system_identifier OPERATOR(pg_catalog.=) $8 " \
	"AND c.database_oid OPERATOR(pg_catalog.=) $9))"
#define EMIT_INSERT_0_2_TYPES \
	{UUIDOID, TEXTOID, JSONBOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, INT8OID, OIDOID}

static const struct
{
	const char *sql;
	int			nargs;
	Oid			argtypes[9];
}			emit_statements[EMIT_STATEMENT_COUNT] =
{
	[EMIT_INSERT_0_1] = {
		"INSERT INTO webhook.event_log (id, event_type, payload, created_at, txid) "
		"SELECT $1, $2, $3, $4, pg_catalog.pg_current_xact_id() "
		"WHERE EXISTS (SELECT 1 FROM webhook.event_types t "
		"WHERE t.name OPERATOR(pg_catalog.=) $2)",
		4, {UUIDOID, TEXTOID, JSONBOID, TIMESTAMPTZOID}
	},

	/*
	 * With an idempotency key: a second event of the same (tenant, key)
	 * inserts nothing; if the first is not committed yet, the insert waits
	 * for its transaction.
	 */
	[EMIT_INSERT_0_2] = {
		EMIT_INSERT_0_2_SQL
		" ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL "
		"DO NOTHING",
		9, EMIT_INSERT_0_2_TYPES
	},

	/*
	 * The same without a key, the usual case: no conflict is possible, and
	 * an insert that may meet one (speculative insertion) costs more.
	 */
	[EMIT_INSERT_0_2_NO_KEY] = {
		EMIT_INSERT_0_2_SQL,
		9, EMIT_INSERT_0_2_TYPES
	},
	[EMIT_FIND_KEY] = {
		"SELECT e.id FROM webhook.event_log e "
		"WHERE e.tenant OPERATOR(pg_catalog.=) $1 "
		"AND e.idempotency_key OPERATOR(pg_catalog.=) $2",
		2, {TEXTOID, TEXTOID}
	},
	[EMIT_FIND_KEY_NO_TENANT] = {
		"SELECT e.id FROM webhook.event_log e "
		"WHERE e.tenant IS NULL "
		"AND e.idempotency_key OPERATOR(pg_catalog.=) $1",
		1, {TEXTOID}
	},
};

static SPIPlanPtr emit_plans[EMIT_STATEMENT_COUNT];
static int64 emit_last_uuid_clock = 0;

/* Which schema the function being called belongs to. */
typedef enum EmitSchema
{
	EMIT_SCHEMA_0_1,
	EMIT_SCHEMA_0_2
} EmitSchema;

/* One event to record. */
typedef struct EmitRequest
{
	EmitSchema	schema;
	text	   *event_type;
	Jsonb	   *payload;
	/* 0.2 only; NULL when the event has none: */
	const char *tenant;
	const char *ordering_key;
	const char *idempotency_key;
	/* the outcome: */
	Datum		id;
} EmitRequest;

/*
 * What a trigger using emit_trigger asks for, worked out at its first row
 * and kept in fn_extra for the rest of the statement.
 */
typedef struct EmitTriggerSpec
{
	Oid			trigger_oid;
	Oid			function_owner; /* inserts as this role */
	bool		security_definer;	/* the 0.1 declaration */
	text	   *event_type;
	AttrNumber	tenant_column;	/* 0: none */
	AttrNumber	ordering_key_column;	/* 0: none */
} EmitTriggerSpec;

/*
 * Make a UUIDv7: 48 bits of Unix milliseconds, then 12 bits of sub-
 * millisecond time (kept increasing within this backend), then random bits.
 */
static void
emit_make_uuid_v7(pg_uuid_t *uuid, TimestampTz now)
{
	int64		unix_us = now + EMIT_UNIX_EPOCH_OFFSET_US;
	int64		clock;			/* milliseconds << 12 | sub-millisecond */
	uint64		millis;

	clock = ((unix_us / 1000) << 12) | (((unix_us % 1000) * 4096) / 1000);
	if (clock <= emit_last_uuid_clock)
		clock = emit_last_uuid_clock + 1;
	emit_last_uuid_clock = clock;
	millis = (uint64) (clock >> 12);

	if (!pg_strong_random(uuid->data + 8, 8))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random bytes for an event id")));
	for (int i = 0; i < 6; i++)
		uuid->data[i] = (uint8) (millis >> (40 - 8 * i));
	uuid->data[6] = 0x70 | (uint8) ((clock >> 8) & 0x0f);
	uuid->data[7] = (uint8) (clock & 0xff);
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;
}

/*
 * The plan of one of emit's statements, prepared at its first use. Call
 * inside SPI.
 */
static SPIPlanPtr
emit_plan(EmitStatement statement)
{
	if (emit_plans[statement] == NULL)
	{
		SPIPlanPtr	plan;

		plan = SPI_prepare_cursor(emit_statements[statement].sql,
								  emit_statements[statement].nargs,
								  (Oid *) emit_statements[statement].argtypes,
								  CURSOR_OPT_GENERIC_PLAN);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare_cursor failed for emit statement %d: %s",
				 (int) statement, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed for emit statement %d", (int) statement);
		emit_plans[statement] = plan;
	}
	return emit_plans[statement];
}

/*
 * Run a query with parameters, unprepared, and return the first column of
 * its first row as text, or NULL when it returns no row. For emit's rare
 * paths.
 */
static char *
emit_query_value(const char *sql, int nargs, Oid *argtypes, Datum *values)
{
	int			rc = SPI_execute_with_args(sql, nargs, argtypes, values, NULL, true, 1);

	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * Raise 55000 if the outbox was restored from another server or database
 * and the worker has not re-based it yet: a dispatch cursor row of the
 * origin is still there.
 */
static void
emit_require_rebased(void)
{
	Oid			argtypes[2] = {INT8OID, OIDOID};
	Datum		values[2];

	values[0] = Int64GetDatum((int64) GetSystemIdentifier());
	values[1] = ObjectIdGetDatum(MyDatabaseId);
	if (emit_query_value("SELECT 1 FROM webhook.dispatch_cursor c "
						 "WHERE NOT (c.system_identifier OPERATOR(pg_catalog.=) $1 "
						 "AND c.database_oid OPERATOR(pg_catalog.=) $2)",
						 2, argtypes, values) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("webhook outbox of database \"%s\" was restored from another and is not re-based yet",
						get_database_name(MyDatabaseId)),
				 errdetail("Until it is, a new event could be confused with the restored ones."),
				 errhint("The delivery worker re-bases it at its next pass; emit again then.")));
}

/*
 * Raise the "not in the catalog" error, listing what the catalog holds,
 * unless the catalog has the event type.
 */
static void
emit_require_known_event_type(text *event_type)
{
	Oid			argtype = TEXTOID;
	Datum		value = PointerGetDatum(event_type);
	char	   *known;

	if (emit_query_value("SELECT 1 FROM webhook.event_types t "
						 "WHERE t.name OPERATOR(pg_catalog.=) $1",
						 1, &argtype, &value) != NULL)
		return;

	known = emit_query_value("SELECT pg_catalog.string_agg(t.name, ', ' ORDER BY t.name COLLATE pg_catalog.\"C\") "
							 "FROM webhook.event_types t",
							 0, NULL, NULL);
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("event type \"%s\" is not in the catalog", text_to_cstring(event_type)),
			 known ? errdetail("Known event types: %s.", known) : 0,
			 errhint("Register it with webhook.register_event_type().")));
}

/*
 * The id of the event that holds the request's (tenant, idempotency key),
 * or 0 when none does. A statement of its own: under READ COMMITTED it sees
 * the event of a transaction that committed while the insert waited for it.
 */
static Datum
emit_find_idempotent_event(const EmitRequest *request)
{
	Datum		values[2];
	int			rc;
	bool		isnull;
	Datum		id;

	if (request->tenant != NULL)
	{
		values[0] = CStringGetTextDatum(request->tenant);
		values[1] = CStringGetTextDatum(request->idempotency_key);
		rc = SPI_execute_plan(emit_plan(EMIT_FIND_KEY), values, NULL, false, 1);
	}
	else
	{
		values[0] = CStringGetTextDatum(request->idempotency_key);
		rc = SPI_execute_plan(emit_plan(EMIT_FIND_KEY_NO_TENANT), values, NULL, false, 1);
	}
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		return (Datum) 0;

	id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return SPI_datumTransfer(id, false, sizeof(pg_uuid_t));
}

/*
 * Raise 22023 unless key, an ordering or idempotency key, is NULL or has 1
 * to EMIT_MAX_KEY_LENGTH characters. what names it in the error.
 */
static void
emit_check_key(const char *key, const char *what)
{
	int			length;

	if (key == NULL)
		return;
	if (key[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what),
				 errhint("Pass NULL for an event without one.")));
	length = pg_mbstrlen(key);
	if (length > EMIT_MAX_KEY_LENGTH)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is too long", what),
				 errdetail("It has %d characters; at most %d are allowed.",
						   length, EMIT_MAX_KEY_LENGTH)));
}

/*
 * The tenant of an event: the one given, else the session's webhook.tenant;
 * the empty string is no tenant (NULL).
 */
static const char *
emit_resolve_tenant(const char *given)
{
	const char *tenant = given != NULL ? given : webhook_tenant;

	return (tenant == NULL || tenant[0] == '\0') ? NULL : tenant;
}

/*
 * Record one event in the current transaction; its id (a new one, or that
 * of the event already holding the idempotency key) goes to request->id.
 * Runs with the rights of the extension's owner.
 */
static void
emit_record(EmitRequest *request)
{
	char	   *type_name = text_to_cstring(request->event_type);
	size_t		payload_size = VARSIZE(request->payload) - VARHDRSZ;
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));
	TimestampTz now = GetCurrentTimestamp();
	Datum		values[9];
	char		nulls[9];
	SPIPlanPtr	plan;
	int			rc;

	webhook_require_served_database();
	webhook_require_event_type_name(type_name);

	/*
	 * The extension's own operational events (webhook.endpoint.disabled,
	 * webhook.delivery.failed) are recorded by the extension alone: no one
	 * may forge them. (A 0.1 schema reserved no prefix.)
	 */
	if (request->schema != EMIT_SCHEMA_0_1 && strncmp(type_name, "webhook.", 8) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event type \"%s\" is reserved", type_name),
				 errdetail("Events under the webhook. prefix are recorded by webhook_outbox itself."),
				 errhint("Emit an event type under another prefix.")));
	if (payload_size > (Size) webhook_max_payload_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("payload of event \"%s\" is too large: %zu bytes",
						type_name, payload_size),
				 errdetail("webhook.max_payload_size is %d bytes.", webhook_max_payload_size)));
	emit_check_key(request->ordering_key, "ordering key");
	emit_check_key(request->idempotency_key, "idempotency key");

	emit_make_uuid_v7(id, now);
	values[0] = UUIDPGetDatum(id);
	values[1] = PointerGetDatum(request->event_type);
	values[2] = JsonbPGetDatum(request->payload);
	values[3] = TimestampTzGetDatum(now);
	memset(nulls, ' ', sizeof(nulls));
	if (request->schema == EMIT_SCHEMA_0_2)
	{
		const char *keys[3] = {request->tenant, request->ordering_key,
		request->idempotency_key};

		for (int i = 0; i < 3; i++)
		{
			values[4 + i] = keys[i] ? CStringGetTextDatum(keys[i]) : (Datum) 0;
			nulls[4 + i] = keys[i] ? ' ' : 'n';
		}
		values[7] = Int64GetDatum((int64) GetSystemIdentifier());
		values[8] = ObjectIdGetDatum(MyDatabaseId);
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = emit_plan(request->schema == EMIT_SCHEMA_0_1 ? EMIT_INSERT_0_1 :
					 request->idempotency_key != NULL ? EMIT_INSERT_0_2 :
					 EMIT_INSERT_0_2_NO_KEY);
	rc = SPI_execute_plan(plan, values, nulls, false, 1);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));

	if (SPI_processed == 1)
	{
		request->id = UUIDPGetDatum(id);
		SPI_finish();
		webhook_wake_at_commit(WEBHOOK_WAKE_DISPATCH);
		return;
	}

	/*
	 * Nothing inserted: the key is taken (its event is the answer, whatever
	 * its type and payload), the outbox awaits its re-base, or the event
	 * type is not in the catalog.
	 */
	if (request->idempotency_key != NULL)
	{
		request->id = emit_find_idempotent_event(request);
		if (request->id != (Datum) 0)
		{
			SPI_finish();
			return;
		}
	}
	if (request->schema == EMIT_SCHEMA_0_2)
		emit_require_rebased();
	emit_require_known_event_type(request->event_type);

	/*
	 * Something changed between the insert and the look-ups: the key's
	 * event was removed (retention), or the event type registered.
	 */
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not record event \"%s\" because of a concurrent change", type_name),
			 request->idempotency_key != NULL ?
			 errdetail("The event holding its idempotency key was removed meanwhile.") :
			 errdetail("Its event type was registered meanwhile."),
			 errhint("Retry the transaction.")));
}

/*
 * Call fn(arg) as role, with security context flags added, and return to
 * the current role and context after it, error or not (as
 * fmgr_security_definer does for a whole function).
 */
static void
emit_call_as(Oid role, int flags, void (*fn) (void *), void *arg)
{
	Oid			saved_role;
	int			saved_context;

	GetUserIdAndSecContext(&saved_role, &saved_context);
	SetUserIdAndSecContext(role, saved_context | flags);
	PG_TRY();
	{
		fn(arg);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(saved_role, saved_context);
	}
	PG_END_TRY();
}

/* emit_record for emit_call_as. */
static void
emit_record_callback(void *request)
{
	emit_record((EmitRequest *) request);
}

/*
 * webhook.emit(event_type text, payload jsonb) RETURNS uuid (0.1), and
 * webhook.emit(event_type text, payload jsonb, tenant text, ordering_key
 * text, idempotency_key text) RETURNS uuid (0.2): one symbol for both
 * declarations, told apart by their number of arguments. SECURITY DEFINER.
 */
PG_FUNCTION_INFO_V1(webhook_emit);
Datum
webhook_emit(PG_FUNCTION_ARGS)
{
	EmitRequest request = {0};

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event type must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("payload must not be null"),
				 errhint("Pass '{}' for an event without data.")));
	request.event_type = PG_GETARG_TEXT_PP(0);
	request.payload = PG_GETARG_JSONB_P(1);

	if (PG_NARGS() == 2)
		request.schema = EMIT_SCHEMA_0_1;
	else if (PG_NARGS() == 5)
	{
		request.schema = EMIT_SCHEMA_0_2;
		request.tenant = emit_resolve_tenant(PG_ARGISNULL(2) ? NULL :
											 text_to_cstring(PG_GETARG_TEXT_PP(2)));
		request.ordering_key = PG_ARGISNULL(3) ? NULL :
			text_to_cstring(PG_GETARG_TEXT_PP(3));
		request.idempotency_key = PG_ARGISNULL(4) ? NULL :
			text_to_cstring(PG_GETARG_TEXT_PP(4));
	}
	else
		elog(ERROR, "webhook_emit called with %d arguments", PG_NARGS());

	emit_record(&request);
	return request.id;
}

/*
 * The user column of rel named name, or 0 when there is none.
 */
static AttrNumber
emit_column_number(Relation rel, const char *name)
{
	TupleDesc	desc = RelationGetDescr(rel);

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(desc, i);

		if (!attr->attisdropped && strcmp(NameStr(attr->attname), name) == 0)
			return attr->attnum;
	}
	return 0;
}

/*
 * Work out, from the trigger's arguments and the function's declaration,
 * what a trigger using emit_trigger asks for. The event type comes first;
 * since 0.2 'tenant=<column>' and 'ordering_key=<column>' may follow.
 */
static EmitTriggerSpec *
emit_trigger_spec(FunctionCallInfo fcinfo, TriggerData *trigdata)
{
	EmitTriggerSpec *cached = (EmitTriggerSpec *) fcinfo->flinfo->fn_extra;
	EmitTriggerSpec spec = {0};
	Trigger    *trigger = trigdata->tg_trigger;
	Relation	rel = trigdata->tg_relation;
	MemoryContext old_context;
	HeapTuple	proc;

	if (cached != NULL && cached->trigger_oid == trigger->tgoid)
		return cached;

	spec.trigger_oid = trigger->tgoid;
	proc = SearchSysCache1(PROCOID, ObjectIdGetDatum(fcinfo->flinfo->fn_oid));
	if (!HeapTupleIsValid(proc))
		elog(ERROR, "cache lookup failed for function %u", fcinfo->flinfo->fn_oid);
	spec.function_owner = ((Form_pg_proc) GETSTRUCT(proc))->proowner;
	spec.security_definer = ((Form_pg_proc) GETSTRUCT(proc))->prosecdef;
	ReleaseSysCache(proc);

	if (trigger->tgnargs < 1)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" must pass the event type to webhook.emit_trigger()",
						trigger->tgname),
				 errhint("Write EXECUTE FUNCTION webhook.emit_trigger('account.created').")));
	if (spec.security_definer && trigger->tgnargs != 1)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" must pass exactly one argument, the event type, to webhook.emit_trigger()",
						trigger->tgname),
				 errhint("The arguments tenant= and ordering_key= need version 0.2 of webhook_outbox: run ALTER EXTENSION webhook_outbox UPDATE.")));

	for (int i = 1; i < trigger->tgnargs; i++)
	{
		const char *argument = trigger->tgargs[i];
		const char *column = strchr(argument, '=');
		AttrNumber *target;

		if (column != NULL && column - argument == 6 && strncmp(argument, "tenant", 6) == 0)
			target = &spec.tenant_column;
		else if (column != NULL && column - argument == 12 && strncmp(argument, "ordering_key", 12) == 0)
			target = &spec.ordering_key_column;
		else
			ereport(ERROR,
					(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
					 errmsg("trigger \"%s\" passes an invalid argument \"%s\" to webhook.emit_trigger()",
							trigger->tgname, webhook_value_for_display(argument)),
					 errdetail("After the event type, webhook.emit_trigger() takes 'tenant=<column>' and 'ordering_key=<column>'.")));
		if (*target != 0)
			ereport(ERROR,
					(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
					 errmsg("trigger \"%s\" passes \"%.*s\" more than once to webhook.emit_trigger()",
							trigger->tgname, (int) (column - argument), argument)));
		column++;
		*target = emit_column_number(rel, column);
		if (*target == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("column \"%s\" of relation \"%s\" does not exist",
							webhook_value_for_display(column), RelationGetRelationName(rel)),
					 errdetail("Trigger \"%s\" names it in its argument \"%s\".",
							   trigger->tgname, webhook_value_for_display(argument))));
	}

	/* Kept for the rest of the statement. */
	old_context = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
	spec.event_type = cstring_to_text(trigger->tgargs[0]);
	cached = palloc(sizeof(EmitTriggerSpec));
	*cached = spec;
	MemoryContextSwitchTo(old_context);
	fcinfo->flinfo->fn_extra = cached;
	return cached;
}

/* What emit_row_to_jsonb works on and gives. */
typedef struct EmitRow
{
	HeapTuple	tuple;
	TupleDesc	desc;
	Jsonb	   *json;
} EmitRow;

/*
 * Turn a row into jsonb, with the rights of the current role: the output
 * functions and casts to json of its columns' types run.
 */
static void
emit_row_to_jsonb(void *arg)
{
	EmitRow    *row = (EmitRow *) arg;
	Datum		json;

	json = DirectFunctionCall1(row_to_json, heap_copy_tuple_as_datum(row->tuple, row->desc));
	row->json = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
												   CStringGetDatum(TextDatumGetCString(json))));
}

/*
 * webhook.emit_trigger('event.type' [, 'tenant=<column>'] [,
 * 'ordering_key=<column>']): a row trigger that emits the row (NEW, or OLD
 * for DELETE) as the payload.
 *
 * Since 0.2 the function is SECURITY INVOKER: the row is turned into JSON
 * (and the tenant and ordering key columns into text) as the role that
 * fired the trigger, and only the insert runs as the function's owner. A
 * database still on 0.1 declares it SECURITY DEFINER, so this runs as the
 * extension's owner already: the row is then turned into JSON as the owner
 * of the table, never as the extension's owner.
 */
PG_FUNCTION_INFO_V1(webhook_emit_trigger);
Datum
webhook_emit_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	EmitTriggerSpec *spec;
	EmitRequest request = {0};
	EmitRow		row;
	HeapTuple	rettuple;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("webhook.emit_trigger() must be called as a trigger")));
	if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" must be FOR EACH ROW to use webhook.emit_trigger()",
						trigdata->tg_trigger->tgname)));
	spec = emit_trigger_spec(fcinfo, trigdata);

	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		rettuple = trigdata->tg_newtuple;
	else
		rettuple = trigdata->tg_trigtuple;
	row.tuple = rettuple;
	row.desc = RelationGetDescr(trigdata->tg_relation);
	request.event_type = spec->event_type;

	if (spec->security_definer)
	{
		/*
		 * The 0.1 declaration: convert as the table's owner, restricted as
		 * maintenance commands are when they run its code, then insert as
		 * the extension's owner that fmgr made us.
		 */
		emit_call_as(trigdata->tg_relation->rd_rel->relowner,
					 SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION,
					 emit_row_to_jsonb, &row);
		request.schema = EMIT_SCHEMA_0_1;
		request.payload = row.json;
		emit_record(&request);
	}
	else
	{
		emit_row_to_jsonb(&row);
		request.schema = EMIT_SCHEMA_0_2;
		request.payload = row.json;
		request.tenant = emit_resolve_tenant(spec->tenant_column == 0 ? NULL :
											 SPI_getvalue(rettuple, row.desc, spec->tenant_column));
		if (spec->ordering_key_column != 0)
			request.ordering_key = SPI_getvalue(rettuple, row.desc, spec->ordering_key_column);
		emit_call_as(spec->function_owner, SECURITY_LOCAL_USERID_CHANGE,
					 emit_record_callback, &request);
	}

	return PointerGetDatum(rettuple);
}

/*
 * webhook.uuid_v7(): a new time-ordered id (also used for endpoint ids).
 */
PG_FUNCTION_INFO_V1(webhook_uuid_v7);
Datum
webhook_uuid_v7(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));

	emit_make_uuid_v7(id, GetCurrentTimestamp());
	PG_RETURN_UUID_P(id);
}
