/*-------------------------------------------------------------------------
 *
 * emit.c
 *		webhook.emit and webhook.emit_trigger: record an event in the
 *		caller's transaction.
 *
 * Emitting is one INSERT into webhook.event_log, guarded by a look-up in the
 * catalog: no counter row, no lock shared between emitters, no NOTIFY. The
 * row carries the emitting transaction's id so that the worker can find it
 * once it commits, however late (see queue.c). A transaction callback wakes
 * the worker at commit (wakeup.c); a rolled-back event is never seen.
 *
 *-------------------------------------------------------------------------
 */
#include "webhook_outbox.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"


#define EMIT_UNIX_EPOCH_OFFSET_US \
	((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY)

static SPIPlanPtr emit_insert_plan = NULL;
static int64 emit_last_uuid_clock = 0;

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
 * Raise the "not in the catalog" error, listing what the catalog holds.
 */
static void
emit_unknown_event_type(const char *event_type)
{
	char	   *known = NULL;
	bool		isnull;

	if (SPI_execute("SELECT pg_catalog.string_agg(name, ', ' ORDER BY name COLLATE \"C\") FROM webhook.event_types",
					true, 1) == SPI_OK_SELECT && SPI_processed == 1)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			known = TextDatumGetCString(d);
	}
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("event type \"%s\" is not in the catalog", event_type),
			 known ? errdetail("Known event types: %s.", known) : 0,
			 errhint("Register it with webhook.register_event_type().")));
}

/*
 * Record one event in the current transaction and return its id.
 */
static Datum
emit_record(text *event_type, Jsonb *payload)
{
	char	   *type_name = text_to_cstring(event_type);
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));
	TimestampTz now = GetCurrentTimestamp();
	Datum		values[4];
	int			rc;

	webhook_require_event_type_name(type_name);
	if (VARSIZE(payload) - VARHDRSZ > (Size) webhook_max_payload_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("payload of event \"%s\" is too large: %zu bytes",
						type_name, (size_t) (VARSIZE(payload) - VARHDRSZ)),
				 errdetail("webhook.max_payload_size is %d bytes.", webhook_max_payload_size)));

	emit_make_uuid_v7(id, now);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (emit_insert_plan == NULL)
	{
		Oid			types[4] = {UUIDOID, TEXTOID, JSONBOID, TIMESTAMPTZOID};
		SPIPlanPtr	plan;

		/* One plan for every call: it has no choice to make by value. */
		plan = SPI_prepare_cursor("INSERT INTO webhook.event_log (id, event_type, payload, created_at, txid) "
								  "SELECT $1, $2, $3, $4, pg_catalog.pg_current_xact_id() "
								  "WHERE EXISTS (SELECT 1 FROM webhook.event_types t WHERE t.name = $2)",
								  4, types, CURSOR_OPT_GENERIC_PLAN);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		emit_insert_plan = plan;
	}
	values[0] = UUIDPGetDatum(id);
	values[1] = PointerGetDatum(event_type);
	values[2] = JsonbPGetDatum(payload);
	values[3] = TimestampTzGetDatum(now);
	rc = SPI_execute_plan(emit_insert_plan, values, NULL, false, 1);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
	if (SPI_processed != 1)
		emit_unknown_event_type(type_name);
	SPI_finish();

	webhook_wake_at_commit(WEBHOOK_WAKE_DISPATCH);
	return UUIDPGetDatum(id);
}

/*
 * webhook.emit(event_type text, payload jsonb) RETURNS uuid
 */
PG_FUNCTION_INFO_V1(webhook_emit);
Datum
webhook_emit(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event type must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("payload must not be null"),
				 errhint("Pass '{}' for an event without data.")));
	return emit_record(PG_GETARG_TEXT_PP(0), PG_GETARG_JSONB_P(1));
}

/*
 * webhook.emit_trigger('event.type'): a row trigger that emits the row
 * (NEW, or OLD for DELETE) as the payload.
 */
PG_FUNCTION_INFO_V1(webhook_emit_trigger);
Datum
webhook_emit_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;
	HeapTuple	row;
	HeapTuple	rettuple;
	Datum		json;
	Jsonb	   *payload;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("webhook.emit_trigger() must be called as a trigger")));
	trigger = trigdata->tg_trigger;
	if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" must be FOR EACH ROW to use webhook.emit_trigger()",
						trigger->tgname)));
	if (trigger->tgnargs != 1)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" must pass exactly one argument, the event type, to webhook.emit_trigger()",
						trigger->tgname)));

	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		row = rettuple = trigdata->tg_newtuple;
	else
		row = rettuple = trigdata->tg_trigtuple;

	json = DirectFunctionCall1(row_to_json,
							   heap_copy_tuple_as_datum(row, trigdata->tg_relation->rd_att));
	payload = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
												 CStringGetDatum(TextDatumGetCString(json))));
	emit_record(cstring_to_text(trigger->tgargs[0]), payload);

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
