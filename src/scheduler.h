/*-------------------------------------------------------------------------
 *
 * scheduler.h
 *		Per-endpoint delivery policy (scheduler.c): breaker, Retry-After,
 *		rate limit, concurrency.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WEBHOOK_SCHEDULER_H
#define WEBHOOK_SCHEDULER_H

#include "delivery.h"

/* Why a due delivery does not start now. */
typedef enum SchedulerReason
{
	SCHEDULER_BREAKER,			/* its endpoint fails as a whole */
	SCHEDULER_RETRY_AFTER,		/* its endpoint asked to be left alone */
	SCHEDULER_RATE_LIMIT,		/* its endpoint's rate limit is reached */
	SCHEDULER_CONCURRENCY		/* webhook.endpoint_concurrency is reached */
} SchedulerReason;

extern void scheduler_init(void);
extern bool scheduler_may_start(const Delivery *d, TimestampTz now, SchedulerReason *reason);
extern void scheduler_started(const Delivery *d, TimestampTz now);
extern bool scheduler_finished(const Delivery *d, TimestampTz now);
extern void scheduler_wake_at(TimestampTz moment);
extern bool scheduler_wakeup_due(TimestampTz now, TimestampTz last_fetch);
extern TimestampTz scheduler_next_wakeup(void);
extern double scheduler_jitter(void);
extern int	scheduler_waiting_endpoints(void);
extern void scheduler_fetch_limits(TimestampTz now, pg_uuid_t *blocked, int *blocked_count,
								   pg_uuid_t *probing, int *probing_count);
extern void scheduler_count_waiting(TimestampTz now, int *open, int *held, int *limited);

#endif							/* WEBHOOK_SCHEDULER_H */
