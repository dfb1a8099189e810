/*-------------------------------------------------------------------------
 *
 * queue.c
 *		The worker's side of the queue: dispatch new events, fetch due
 *		deliveries, record outcomes, remove old history.
 *
 * The SQL itself lives in the install script (webhook.dispatch_new_events,
 * webhook.due_deliveries, webhook.record_attempts,
 * webhook.remove_old_history), where it can be read and tested; this file
 * moves values between those functions and Delivery structs. Every call
 * runs inside a short transaction that worker.c opens and commits; no
 * transaction is ever open during an HTTP request.
 *
 *-------------------------------------------------------------------------
 */
#include "webhook_outbox.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "delivery.h"

/* The worker's statements, prepared once (see queue_execute) */
static SPIPlanPtr dispatch_plan = NULL;
static SPIPlanPtr fetch_plan = NULL;
static SPIPlanPtr record_plan = NULL;
static SPIPlanPtr remove_plan = NULL;
static SPIPlanPtr expire_plan = NULL;
static SPIPlanPtr sequences_plan = NULL;

/*
 * Run one statement of the worker through SPI; raise if it fails. The
 * statement is prepared on first use and its plan kept in *plan for the
 * worker's lifetime: these run several times a second, and parsing and
 * planning them each time cost more than running them. (The plan cache
 * re-plans by itself when what the plan depends on changes, and the worker
 * has every plan made afresh at each poll: see worker.c.)
 */
static void
queue_execute(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types,
			  Datum *values, const char *nulls, int expected)
{
	int			rc;

	if (*plan == NULL)
	{
		SPIPlanPtr	prepared = SPI_prepare(sql, nargs, types);

		if (prepared == NULL || SPI_keepplan(prepared) != 0)
			elog(ERROR, "webhook_outbox worker could not prepare a query (%s): %s",
				 SPI_result_code_string(SPI_result), sql);
		*plan = prepared;
	}
	rc = SPI_execute_plan(*plan, values, nulls, false, 0);
	if (rc != expected)
		elog(ERROR, "webhook_outbox worker query failed (%s): %s",
			 SPI_result_code_string(rc), sql);
}

/*
 * Whether the extension is installed in the worker's database, and at the
 * version this library expects; *version is set to the installed one.
 */
SchemaState
queue_schema_state(char **version)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum("webhook_outbox")};
	SchemaState state = SCHEMA_MISSING;

	*version = NULL;
	if (!OidIsValid(get_extension_oid("webhook_outbox", true)))
		return SCHEMA_MISSING;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = $1",
							  1, types, values, NULL, true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		*version = MemoryContextStrdup(TopMemoryContext,
									   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
		state = strcmp(*version, WEBHOOK_OUTBOX_VERSION) == 0 ? SCHEMA_READY : SCHEMA_OTHER_VERSION;
	}
	SPI_finish();
	return state;
}

/*
 * Dispatch one chunk of newly committed events, at most max_events: set
 * *events to how many it took (fewer than max_events: the pass is complete)
 * and return how many deliveries it queued.
 */
int64
queue_dispatch(int max_events, int *events)
{
	Oid			types[3] = {INT4OID, INT8OID, OIDOID};
	Datum		values[3] = {Int32GetDatum(max_events),
		Int64GetDatum((int64) GetSystemIdentifier()), ObjectIdGetDatum(MyDatabaseId)};
	bool		isnull;
	int64		deliveries;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	queue_execute(&dispatch_plan, "SELECT events, deliveries FROM webhook.dispatch_new_events($1, $2, $3)",
				  3, types, values, NULL, SPI_OK_SELECT);
	*events = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	deliveries = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	SPI_finish();
	return deliveries;
}

/*
 * An array of uuids as a Datum.
 */
static Datum
queue_uuid_array(pg_uuid_t *ids, int count)
{
	Datum	   *elements = palloc(sizeof(Datum) * Max(count, 1));

	for (int i = 0; i < count; i++)
		elements[i] = UUIDPGetDatum(&ids[i]);
	return PointerGetDatum(construct_array(elements, count, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR));
}

/*
 * Build the endpoint's own headers as "Name: value" lines.
 */
static struct curl_slist *
queue_custom_headers(Jsonb *headers)
{
	struct curl_slist *list = NULL;
	JsonbIterator *it = JsonbIteratorInit(&headers->root);
	JsonbValue	v;
	JsonbIteratorToken token;
	char	   *name = NULL;

	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (token == WJB_KEY)
			name = pnstrdup(v.val.string.val, v.val.string.len);
		else if (token == WJB_VALUE && v.type == jbvString && name != NULL)
		{
			char	   *line = psprintf("%s: %.*s", name, v.val.string.len, v.val.string.val);

			list = curl_slist_append(list, line);
			pfree(line);
		}
	}
	return list;
}

/*
 * A text column of the current SPI row, copied into context (NULL stays NULL).
 */
static char *
queue_text(HeapTuple row, TupleDesc desc, int column, MemoryContext context)
{
	bool		isnull;
	Datum		value = SPI_getbinval(row, desc, column, &isnull);

	if (isnull)
		return NULL;
	return MemoryContextStrdup(context, TextDatumGetCString(value));
}

/*
 * A timestamp as the body's "timestamp": ISO 8601 in UTC, to the
 * microsecond (2026-11-25T01:30:00.123456Z).
 */
static void
queue_format_timestamp(TimestampTz timestamp, char *buffer, size_t size)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (timestamp2tm(timestamp, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "webhook_outbox worker: event timestamp out of range");
	snprintf(buffer, size, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ",
			 tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
}

/*
 * Fetch up to limit due deliveries into fetched (room for limit), at most
 * per_endpoint for any endpoint counting those the worker holds already
 * (busy) -- none for the blocked endpoints, one for the probing ones --
 * each endpoint's after the worker's position in it if it has one;
 * each ready to send, allocated in context, in the order of the queue.
 * Returns how many. Each is in fetched as soon as it is allocated, so that
 * the caller can free them all should anything fail half-way.
 */
int
queue_fetch(int limit, int per_endpoint, DeliveryKey *busy, int busy_count,
			QueuePosition *positions, int position_count,
			pg_uuid_t *blocked, int blocked_count,
			pg_uuid_t *probing, int probing_count,
			int worker_index, int worker_count,
			Delivery **fetched, MemoryContext context)
{
	Oid			types[11] = {UUIDARRAYOID, UUIDARRAYOID, INT4OID, INT4OID,
		UUIDARRAYOID, TIMESTAMPTZARRAYOID, UUIDARRAYOID, UUIDARRAYOID, UUIDARRAYOID,
	INT4OID, INT4OID};
	Datum		values[11];
	pg_uuid_t  *busy_events = palloc(sizeof(pg_uuid_t) * Max(busy_count, 1));
	pg_uuid_t  *busy_endpoints = palloc(sizeof(pg_uuid_t) * Max(busy_count, 1));
	pg_uuid_t  *after_endpoints = palloc(sizeof(pg_uuid_t) * Max(position_count, 1));
	Datum	   *after_at = palloc(sizeof(Datum) * Max(position_count, 1));
	pg_uuid_t  *after_events = palloc(sizeof(pg_uuid_t) * Max(position_count, 1));
	int			count;

	for (int i = 0; i < busy_count; i++)
	{
		busy_events[i] = busy[i].event_id;
		busy_endpoints[i] = busy[i].endpoint_id;
	}
	for (int i = 0; i < position_count; i++)
	{
		after_endpoints[i] = positions[i].endpoint_id;
		after_at[i] = TimestampTzGetDatum(positions[i].at);
		after_events[i] = positions[i].event_id;
	}
	values[0] = queue_uuid_array(busy_events, busy_count);
	values[1] = queue_uuid_array(busy_endpoints, busy_count);
	values[2] = Int32GetDatum(per_endpoint);
	values[3] = Int32GetDatum(limit);
	values[4] = queue_uuid_array(after_endpoints, position_count);
	values[5] = PointerGetDatum(construct_array(after_at, position_count, TIMESTAMPTZOID,
												sizeof(TimestampTz), FLOAT8PASSBYVAL,
												TYPALIGN_DOUBLE));
	values[6] = queue_uuid_array(after_events, position_count);
	values[7] = queue_uuid_array(blocked, blocked_count);
	values[8] = queue_uuid_array(probing, probing_count);
	values[9] = Int32GetDatum(worker_index);
	values[10] = Int32GetDatum(worker_count);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	queue_execute(&fetch_plan,
				  "SELECT * FROM webhook.due_deliveries($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
				  11, types, values, NULL, SPI_OK_SELECT);

	count = (int) Min(SPI_processed, (uint64) limit);
	for (int i = 0; i < count; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Delivery   *d = MemoryContextAllocZero(context, sizeof(Delivery));
		bool		isnull;
		char	   *payload;
		char		created_at[40];
		Datum		headers;
		StringInfoData body;
		MemoryContext old;

		fetched[i] = d;

		d->event_id = *DatumGetUUIDP(SPI_getbinval(row, desc, 1, &isnull));
		d->endpoint_id = *DatumGetUUIDP(SPI_getbinval(row, desc, 2, &isnull));
		d->attempt = DatumGetInt32(SPI_getbinval(row, desc, 3, &isnull)) + 1;
		d->manual = DatumGetBool(SPI_getbinval(row, desc, 4, &isnull));
		d->event_type = queue_text(row, desc, 5, context);
		payload = queue_text(row, desc, 6, CurrentMemoryContext);
		queue_format_timestamp(DatumGetTimestampTz(SPI_getbinval(row, desc, 7, &isnull)),
							   created_at, sizeof(created_at));
		d->url = queue_text(row, desc, 8, context);
		d->secret = queue_text(row, desc, 9, context);
		d->previous_secret = queue_text(row, desc, 10, context);
		d->event_id_text = MemoryContextStrdup(context,
											   DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&d->event_id))));
		headers = SPI_getbinval(row, desc, 11, &isnull);
		if (!isnull)
			d->headers = queue_custom_headers(DatumGetJsonbP(headers));
		d->due_at = DatumGetTimestampTz(SPI_getbinval(row, desc, 12, &isnull));
		d->manual_requests = DatumGetInt32(SPI_getbinval(row, desc, 13, &isnull));
		d->tenant = queue_text(row, desc, 14, context);
		d->rate_limit = DatumGetInt32(SPI_getbinval(row, desc, 15, &isnull));
		if (isnull)
			d->rate_limit = 0;
		d->ordered = DatumGetBool(SPI_getbinval(row, desc, 16, &isnull));

		/* The body is the same on every attempt: the signature covers it. */
		old = MemoryContextSwitchTo(context);
		initStringInfo(&body);
		appendStringInfo(&body, "{\"id\":\"%s\",\"type\":\"%s\",\"timestamp\":\"%s\",\"data\":%s}",
						 d->event_id_text, d->event_type, created_at, payload);
		MemoryContextSwitchTo(old);
		d->body = body.data;
		d->body_len = body.len;
	}
	SPI_finish();
	return count;
}

/*
 * Release a delivery once its outcome is recorded (or a half-built one,
 * after a failed fetch).
 */
void
queue_free_delivery(Delivery *d)
{
	if (d->headers)
		curl_slist_free_all(d->headers);
	if (d->secret)
		explicit_bzero(d->secret, strlen(d->secret));
	if (d->previous_secret)
		explicit_bzero(d->previous_secret, strlen(d->previous_secret));
	if (d->event_type)
		pfree(d->event_type);
	if (d->url)
		pfree(d->url);
	if (d->body)
		pfree(d->body);
	if (d->event_id_text)
		pfree(d->event_id_text);
	if (d->tenant)
		pfree(d->tenant);
	if (d->secret)
		pfree(d->secret);
	if (d->previous_secret)
		pfree(d->previous_secret);
	if (d->response.data)
		pfree(d->response.data);
	if (d->error)
		pfree(d->error);
	pfree(d);
}

/*
 * Build a one-dimensional array Datum of count elements of type.
 */
static Datum
queue_array(Datum *elements, bool *nulls, int count, Oid type)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {count};
	int			lbs[1] = {1};

	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(elements, nulls, 1, dims, lbs,
											  type, typlen, typbyval, typalign));
}

/*
 * Run record_attempts on prepared arguments; mark the outcomes it returns
 * (their row was held) record_later and return how many.
 */
static int
queue_record_call(Delivery **done, int count, Datum *values)
{
	static Oid	types[16] = {UUIDARRAYOID, UUIDARRAYOID, INT4ARRAYOID, TIMESTAMPTZARRAYOID,
		FLOAT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, BOOLARRAYOID,
		TEXTARRAYOID, TIMESTAMPTZARRAYOID, INT4ARRAYOID, TEXTARRAYOID, INTERVALOID,
	BOOLOID, BOOLOID};
	int			later = 0;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	queue_execute(&record_plan, "SELECT event_id, endpoint_id FROM webhook.record_attempts("
				  "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
				  16, types, values, NULL, SPI_OK_SELECT);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		pg_uuid_t  *event = DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[r],
														SPI_tuptable->tupdesc, 1, &isnull));
		pg_uuid_t  *endpoint = DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[r],
														   SPI_tuptable->tupdesc, 2, &isnull));

		for (int i = 0; i < count; i++)
			if (!done[i]->record_later &&
				memcmp(&done[i]->event_id, event, sizeof(pg_uuid_t)) == 0 &&
				memcmp(&done[i]->endpoint_id, endpoint, sizeof(pg_uuid_t)) == 0)
			{
				done[i]->record_later = true;
				later++;
				break;
			}
	}
	SPI_finish();
	return later;
}

/*
 * Record the outcome of each finished attempt in one statement, with its
 * history row unless history is false (the last resort for an outcome
 * whose history row cannot be written). Plainly first, in a subtransaction
 * (record_attempts gives up a lock wait after its lock_timeout); if a row
 * was held, again skipping held rows: a delivery whose row another
 * transaction holds is then not recorded but marked record_later. Returns
 * how many were marked so.
 */
int
queue_record(Delivery **done, int count, bool history)
{
	static const char *const outcome_names[] = {"succeeded", "retry", "failed", "gone"};
	Oid			element_types[13] = {UUIDOID, UUIDOID, INT4OID, TIMESTAMPTZOID,
		FLOAT8OID, INT4OID, TEXTOID, TEXTOID, BOOLOID, TEXTOID, TIMESTAMPTZOID, INT4OID,
	TEXTOID};
	Datum	   *columns[13];
	bool	   *column_nulls[13];
	Datum		values[16];
	Interval   *disable_after = palloc0(sizeof(Interval));
	MemoryContext caller = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile int later = 0;

	for (int c = 0; c < 13; c++)
	{
		columns[c] = palloc(sizeof(Datum) * count);
		column_nulls[c] = palloc0(sizeof(bool) * count);
	}
	for (int i = 0; i < count; i++)
	{
		Delivery   *d = done[i];

		d->record_later = false;
		columns[0][i] = UUIDPGetDatum(&d->event_id);
		columns[1][i] = UUIDPGetDatum(&d->endpoint_id);
		columns[2][i] = Int32GetDatum(d->attempt);
		columns[3][i] = TimestampTzGetDatum(d->started_at);
		columns[4][i] = Float8GetDatum(d->duration_ms);
		columns[5][i] = Int32GetDatum((int32) d->status_code);
		column_nulls[5][i] = (d->status_code == 0);
		if (d->error)
			columns[6][i] = CStringGetTextDatum(d->error);
		column_nulls[6][i] = (d->error == NULL);
		columns[7][i] = PointerGetDatum(cstring_to_text_with_len(d->response.data, d->response.len));
		column_nulls[7][i] = (d->status_code == 0 && d->response.len == 0);
		columns[8][i] = BoolGetDatum(d->manual);
		columns[9][i] = CStringGetTextDatum(outcome_names[d->outcome]);
		columns[10][i] = TimestampTzGetDatum(d->next_attempt_at);
		column_nulls[10][i] = (d->outcome != OUTCOME_RETRY);
		columns[11][i] = Int32GetDatum(d->manual_requests);
		if (d->tenant)
			columns[12][i] = CStringGetTextDatum(d->tenant);
		column_nulls[12][i] = (d->tenant == NULL);
	}
	for (int c = 0; c < 13; c++)
		values[c] = queue_array(columns[c], column_nulls[c], count, element_types[c]);
	disable_after->time = (int64) webhook_disable_after_s * USECS_PER_SEC;
	values[13] = IntervalPGetDatum(disable_after);
	values[14] = BoolGetDatum(history);
	values[15] = BoolGetDatum(false);

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(caller);
	PG_TRY();
	{
		later = queue_record_call(done, count, values);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(caller);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *error;

		MemoryContextSwitchTo(caller);
		error = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(caller);
		CurrentResourceOwner = owner;
		/* Anything but a lock wait given up is the caller's to handle. */
		if (error->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
			ReThrowError(error);
		FreeErrorData(error);

		for (int i = 0; i < count; i++)
			done[i]->record_later = false;
		values[15] = BoolGetDatum(true);
		later = queue_record_call(done, count, values);
	}
	PG_END_TRY();
	return later;
}

/*
 * Disable the endpoints whose expires_at has passed; returns how many.
 */
int
queue_disable_expired_endpoints(void)
{
	int			count;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	queue_execute(&expire_plan, "SELECT webhook.disable_expired_endpoints()", 0, NULL, NULL, NULL,
				  SPI_OK_SELECT);
	count = (int) SPI_processed;
	SPI_finish();
	return count;
}

/*
 * Start the ordered sequences that wait with none of their deliveries under
 * way (after a manual retry or replay, or a head whose row was held when
 * its predecessor ended); returns how many deliveries it started.
 */
int64
queue_start_waiting_sequences(void)
{
	bool		isnull;
	int64		started = 0;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	queue_execute(&sequences_plan, "SELECT webhook.start_waiting_sequences()", 0, NULL, NULL,
				  NULL, SPI_OK_SELECT);
	if (SPI_processed == 1)
	{
		Datum		value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
										  &isnull);

		if (!isnull)
			started = DatumGetInt64(value);
	}
	SPI_finish();
	return started;
}

/*
 * One step of retention: look at the next batch events older than
 * webhook.retention after position, remove those that may go, and move
 * position on (unset once no old event is left after it). Returns how many
 * were removed.
 */
int64
queue_remove_old_history(int batch, RetentionPosition *position)
{
	Oid			types[4] = {INTERVALOID, INT4OID, TIMESTAMPTZOID, UUIDOID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	Interval   *retention = palloc0(sizeof(Interval));
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	int64		removed;
	Datum		at;
	Datum		id;

	retention->time = (int64) webhook_retention_s * USECS_PER_SEC;
	values[0] = IntervalPGetDatum(retention);
	values[1] = Int32GetDatum(batch);
	values[2] = TimestampTzGetDatum(position->at);
	values[3] = UUIDPGetDatum(&position->id);
	if (!position->set)
		nulls[2] = nulls[3] = 'n';
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	queue_execute(&remove_plan,
				  "SELECT removed, last_at, last_id FROM webhook.remove_old_history_step($1, $2, $3, $4)",
				  4, types, values, nulls, SPI_OK_SELECT);
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	removed = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
	at = SPI_getbinval(row, desc, 2, &isnull);
	position->set = !isnull;
	if (position->set)
	{
		position->at = DatumGetTimestampTz(at);
		id = SPI_getbinval(row, desc, 3, &isnull);
		position->id = *DatumGetUUIDP(id);
	}
	SPI_finish();
	return removed;
}
