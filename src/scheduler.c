/*-------------------------------------------------------------------------
 *
 * scheduler.c
 *		Per-endpoint delivery policy: whether a delivery may start now, and
 *		when something that waits may go. Every reason a due delivery waits
 *		is here:
 *
 *		- the endpoint's circuit breaker, open while the endpoint fails as
 *		  a whole (SCHEDULER_BREAKER_FAILURES endpoint-level failures in a
 *		  row: no connection, a timeout, 502/503/504 without Retry-After;
 *		  and no answer for SCHEDULER_BREAKER_QUIET_US, so that a gateway
 *		  failing one request in ten among many does not trip it),
 *		  letting through one probe at a time after a cool-off that grows
 *		  from SCHEDULER_COOL_OFF_MIN_MS to SCHEDULER_COOL_OFF_MAX_MS, with
 *		  jitter; any answer of the endpoint closes it. A failure of one
 *		  message (an HTTP error the endpoint did answer with) says nothing
 *		  of the endpoint: that message follows its own retry schedule and
 *		  the others go on at full speed;
 *		- a Retry-After on 429 or 503, which holds the whole endpoint (up to
 *		  webhook.retry_after_max);
 *		- the endpoint's rate_limit, never exceeded over any one-second
 *		  window;
 *		- webhook.endpoint_concurrency.
 *
 * The state lives in the worker's memory, never in a row a user can lock;
 * a restarted worker learns it again within a few requests.
 *
 *-------------------------------------------------------------------------
 */
#include "webhook_outbox.h"

#include "common/hashfn.h"
#include "common/pg_prng.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "delivery.h"
#include "scheduler.h"

#define SCHEDULER_BREAKER_FAILURES 3
#define SCHEDULER_BREAKER_QUIET_US ((int64) 250 * 1000)
#define SCHEDULER_COOL_OFF_MIN_MS 500
#define SCHEDULER_COOL_OFF_MAX_MS 2000
#define SCHEDULER_FORGET_AFTER_US ((int64) 60 * USECS_PER_SEC)

/*
 * A rate limit counts requests started in 100 ms slots. A request may start
 * when the last SCHEDULER_RATE_SLOTS slots (1.1 s: a one-second window
 * anywhere, with room for jitter on the way to the receiver) hold fewer
 * than rate_limit, and its own slot fewer than a tenth of it (at least
 * one): requests are spread over the second rather than sent in a burst.
 */
#define SCHEDULER_RATE_SLOT_US (100 * 1000)
#define SCHEDULER_RATE_SLOTS 11

/* The moments something may become possible, at most this many kept. */
#define SCHEDULER_WAKEUPS_MAX 16384

typedef struct EndpointState
{
	pg_uuid_t	id;				/* hash key */
	int			in_flight;

	/* the circuit breaker */
	int			failures_in_a_row;	/* endpoint-level, since it last answered */
	TimestampTz answered_at;	/* when it last answered (0: not yet) */
	bool		open;
	bool		probing;		/* open: a probe is in flight */
	TimestampTz probe_at;		/* open: when the next probe may start */
	int			cool_off_ms;

	/* Retry-After */
	TimestampTz hold_until;

	/* when a delivery last waited for the rate limit */
	TimestampTz limited_at;

	/* the rate limit: requests started per slot, slots[i] for slot base + i */
	int64		slot_base;
	int			slots[SCHEDULER_RATE_SLOTS];
} EndpointState;

static HTAB *scheduler_endpoints = NULL;

/* A min-heap of moments at which a waiting delivery may go. */
static TimestampTz *scheduler_wakeups = NULL;
static int	scheduler_wakeup_count = 0;

/*
 * Endpoints that an open breaker or a hold keeps out of fetches, and those
 * whose rate limit made a delivery wait within the last second (counted
 * for the activity line only).
 */
static EndpointState **scheduler_waiting = NULL;
static int	scheduler_waiting_count = 0;

/*
 * Create the scheduler's state (once per worker).
 */
void
scheduler_init(void)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(pg_uuid_t);
	ctl.entrysize = sizeof(EndpointState);
	scheduler_endpoints = hash_create("webhook_outbox endpoints", 256, &ctl,
									  HASH_ELEM | HASH_BLOBS);
	scheduler_wakeups = MemoryContextAlloc(TopMemoryContext,
										   sizeof(TimestampTz) * SCHEDULER_WAKEUPS_MAX);
	scheduler_waiting = MemoryContextAlloc(TopMemoryContext,
										   sizeof(EndpointState *) * SCHEDULER_WAKEUPS_MAX);
}

/*
 * The state of an endpoint, created closed and idle.
 */
static EndpointState *
scheduler_endpoint(const pg_uuid_t *id)
{
	bool		found;
	EndpointState *state = hash_search(scheduler_endpoints, id, HASH_ENTER, &found);

	if (!found)
	{
		memset(((char *) state) + sizeof(pg_uuid_t), 0,
			   sizeof(EndpointState) - sizeof(pg_uuid_t));
		state->cool_off_ms = SCHEDULER_COOL_OFF_MIN_MS;
	}
	return state;
}

/*
 * Remember that something may become possible at moment: the worker wakes
 * then (a full heap drops it: the poll still comes).
 */
void
scheduler_wake_at(TimestampTz moment)
{
	int			i;

	if (scheduler_wakeup_count >= SCHEDULER_WAKEUPS_MAX)
		return;
	i = scheduler_wakeup_count++;
	while (i > 0 && scheduler_wakeups[(i - 1) / 2] > moment)
	{
		scheduler_wakeups[i] = scheduler_wakeups[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	scheduler_wakeups[i] = moment;
}

/*
 * Drop the earliest moment of the heap.
 */
static void
scheduler_pop_wakeup(void)
{
	TimestampTz last = scheduler_wakeups[--scheduler_wakeup_count];
	int			i = 0;

	for (;;)
	{
		int			child = 2 * i + 1;

		if (child >= scheduler_wakeup_count)
			break;
		if (child + 1 < scheduler_wakeup_count &&
			scheduler_wakeups[child + 1] < scheduler_wakeups[child])
			child++;
		if (scheduler_wakeups[child] >= last)
			break;
		scheduler_wakeups[i] = scheduler_wakeups[child];
		i = child;
	}
	if (scheduler_wakeup_count > 0)
		scheduler_wakeups[i] = last;
}

/*
 * Whether a moment remembered has come since the worker last looked at the
 * queue (last_fetch): a delivery held back may go now, so it looks again.
 * Moments up to now are forgotten; those before last_fetch ask for nothing,
 * as that fetch took what had come due.
 */
bool
scheduler_wakeup_due(TimestampTz now, TimestampTz last_fetch)
{
	bool		due = false;

	while (scheduler_wakeup_count > 0 && scheduler_wakeups[0] <= now)
	{
		if (scheduler_wakeups[0] > last_fetch)
			due = true;
		scheduler_pop_wakeup();
	}
	return due;
}

/*
 * The next moment remembered, or 0 when none.
 */
TimestampTz
scheduler_next_wakeup(void)
{
	return scheduler_wakeup_count > 0 ? scheduler_wakeups[0] : 0;
}

/*
 * A random factor in [0.8, 1.2): Svix's ±20 % jitter.
 */
double
scheduler_jitter(void)
{
	return 0.8 + 0.4 * pg_prng_double(&pg_global_prng_state);
}

/*
 * Keep the state among the waiting ones (once).
 */
static void
scheduler_note_waiting(EndpointState *state)
{
	for (int i = 0; i < scheduler_waiting_count; i++)
		if (scheduler_waiting[i] == state)
			return;
	if (scheduler_waiting_count < SCHEDULER_WAKEUPS_MAX)
		scheduler_waiting[scheduler_waiting_count++] = state;
}

/*
 * Move a rate limit's slots up to the one holding now.
 */
static void
scheduler_rate_advance(EndpointState *state, TimestampTz now)
{
	int64		slot = now / SCHEDULER_RATE_SLOT_US;
	int64		shift = slot - (state->slot_base + SCHEDULER_RATE_SLOTS - 1);

	if (shift <= 0)
		return;
	if (shift >= SCHEDULER_RATE_SLOTS)
		memset(state->slots, 0, sizeof(state->slots));
	else
	{
		memmove(state->slots, state->slots + shift,
				sizeof(int) * (SCHEDULER_RATE_SLOTS - shift));
		memset(state->slots + SCHEDULER_RATE_SLOTS - shift, 0, sizeof(int) * shift);
	}
	state->slot_base = slot - (SCHEDULER_RATE_SLOTS - 1);
}

/*
 * Whether the endpoint's rate limit lets one more request start now.
 */
static bool
scheduler_rate_allows(EndpointState *state, int rate_limit, TimestampTz now)
{
	int			window = 0;
	int			per_slot = Max(1, (rate_limit + 9) / 10);

	scheduler_rate_advance(state, now);
	for (int i = 0; i < SCHEDULER_RATE_SLOTS; i++)
		window += state->slots[i];
	return window < rate_limit && state->slots[SCHEDULER_RATE_SLOTS - 1] < per_slot;
}

/*
 * Whether a delivery may start now; if not, *reason says why (and the
 * worker is woken when it may).
 */
bool
scheduler_may_start(const Delivery *d, TimestampTz now, SchedulerReason *reason)
{
	EndpointState *state = scheduler_endpoint(&d->endpoint_id);

	if (now < state->hold_until)
	{
		*reason = SCHEDULER_RETRY_AFTER;
		return false;
	}
	if (state->open && (state->probing || now < state->probe_at))
	{
		*reason = SCHEDULER_BREAKER;
		return false;
	}
	if (state->in_flight >= webhook_per_endpoint_concurrency)
	{
		*reason = SCHEDULER_CONCURRENCY;
		return false;
	}
	if (d->rate_limit > 0 && !scheduler_rate_allows(state, d->rate_limit, now))
	{
		/* The next slot may let it go. */
		scheduler_wake_at((now / SCHEDULER_RATE_SLOT_US + 1) * SCHEDULER_RATE_SLOT_US);
		state->limited_at = now;
		scheduler_note_waiting(state);
		*reason = SCHEDULER_RATE_LIMIT;
		return false;
	}
	return true;
}

/*
 * Count a request that starts now.
 */
void
scheduler_started(const Delivery *d, TimestampTz now)
{
	EndpointState *state = scheduler_endpoint(&d->endpoint_id);

	state->in_flight++;
	if (state->open)
		state->probing = true;
	if (d->rate_limit > 0)
	{
		scheduler_rate_advance(state, now);
		state->slots[SCHEDULER_RATE_SLOTS - 1]++;
	}
}

/*
 * Whether a finished request says the endpoint failed as a whole: no
 * connection, no answer in time, or a gateway's 502/503/504.
 */
static bool
scheduler_endpoint_failed(const Delivery *d)
{
	return d->status_code == 0 ||
		d->status_code == 502 || d->status_code == 503 || d->status_code == 504;
}

/*
 * Take a finished request into account; returns whether the endpoint may
 * take no new request now (its breaker opened, or it asked to be left
 * alone for a while), so that the deliveries held ready for it go back.
 */
bool
scheduler_finished(const Delivery *d, TimestampTz now)
{
	EndpointState *state = scheduler_endpoint(&d->endpoint_id);

	state->in_flight = Max(0, state->in_flight - 1);

	if ((d->status_code == 429 || d->status_code == 503) && d->retry_after_s >= 0)
	{
		state->hold_until = Max(state->hold_until,
								now + (TimestampTz) Min(d->retry_after_s, webhook_retry_after_max_s) *
								USECS_PER_SEC);
		state->probing = false;
		scheduler_wake_at(state->hold_until);
		scheduler_note_waiting(state);
		return true;
	}
	if (!scheduler_endpoint_failed(d))
	{
		/* It answered: it is up, whatever it thought of this message. */
		state->failures_in_a_row = 0;
		state->answered_at = now;
		state->open = false;
		state->probing = false;
		state->cool_off_ms = SCHEDULER_COOL_OFF_MIN_MS;
		return false;
	}

	state->failures_in_a_row++;
	if (state->open)
	{
		/* A failed probe: wait longer before the next. */
		state->probing = false;
		state->cool_off_ms = Min(state->cool_off_ms * 2, SCHEDULER_COOL_OFF_MAX_MS);
	}
	else if (state->failures_in_a_row >= SCHEDULER_BREAKER_FAILURES &&
			 now - state->answered_at >= SCHEDULER_BREAKER_QUIET_US)
	{
		state->open = true;
		state->probing = false;
		state->cool_off_ms = SCHEDULER_COOL_OFF_MIN_MS;
	}
	else
		return false;
	state->probe_at = now + (TimestampTz) (state->cool_off_ms * scheduler_jitter() * 1000.0);
	scheduler_wake_at(state->probe_at);
	scheduler_note_waiting(state);
	return true;
}

/*
 * The endpoints a fetch must pass over (their breaker is open and no probe
 * may start, or a Retry-After holds them) into blocked, and those whose
 * breaker lets one probe through into probing; both arrays have room for
 * scheduler_waiting_count. Endpoints that wait no more are forgotten here.
 */
void
scheduler_fetch_limits(TimestampTz now, pg_uuid_t *blocked, int *blocked_count,
					   pg_uuid_t *probing, int *probing_count)
{
	int			kept = 0;

	*blocked_count = 0;
	*probing_count = 0;
	for (int i = 0; i < scheduler_waiting_count; i++)
	{
		EndpointState *state = scheduler_waiting[i];

		/*
		 * An open breaker with nothing to probe for a while (the endpoint
		 * was deleted, disabled, or has no due delivery) is forgotten: it
		 * opens again after as many failures if the endpoint still fails.
		 */
		if (state->open && !state->probing &&
			now - state->probe_at > SCHEDULER_FORGET_AFTER_US)
		{
			state->open = false;
			state->failures_in_a_row = 0;
			state->cool_off_ms = SCHEDULER_COOL_OFF_MIN_MS;
		}
		if (now < state->hold_until || (state->open && (state->probing || now < state->probe_at)))
			blocked[(*blocked_count)++] = state->id;
		else if (state->open)
			probing[(*probing_count)++] = state->id;
		else if (now - state->limited_at >= USECS_PER_SEC)
			continue;			/* closed, not held, not limited: no longer waiting */
		scheduler_waiting[kept++] = state;
	}
	scheduler_waiting_count = kept;
}

/*
 * How many endpoints wait, by reason (for the worker's activity line).
 */
void
scheduler_count_waiting(TimestampTz now, int *open, int *held, int *limited)
{
	*open = 0;
	*held = 0;
	*limited = 0;
	for (int i = 0; i < scheduler_waiting_count; i++)
	{
		if (now < scheduler_waiting[i]->hold_until)
			(*held)++;
		else if (scheduler_waiting[i]->open)
			(*open)++;
		/* a delivery waited for the rate limit within the last second */
		else if (now - scheduler_waiting[i]->limited_at < USECS_PER_SEC)
			(*limited)++;
	}
}

/*
 * The number of endpoints that wait (room needed by scheduler_fetch_limits).
 */
int
scheduler_waiting_endpoints(void)
{
	return scheduler_waiting_count;
}
