/*-------------------------------------------------------------------------
 *
 * webhook_outbox.h
 *		Declarations shared by the files of the webhook_outbox extension.
 *
 * The extension has a SQL-callable half (emit.c, endpoints.c, signing.c,
 * validate.c) and a worker half (worker.c, queue.c, http.c, address.c),
 * joined by shared memory and the commit-time wake-up in wakeup.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WEBHOOK_OUTBOX_H
#define WEBHOOK_OUTBOX_H

#include "postgres.h"

#include "utils/guc.h"
#include "utils/timestamp.h"

#define WEBHOOK_OUTBOX_VERSION "0.2"
#define WEBHOOK_USER_AGENT "webhook_outbox/" WEBHOOK_OUTBOX_VERSION

/* Parameters (webhook_outbox.c) */
extern char *webhook_database;
extern char *webhook_databases;
extern int	webhook_workers;
extern bool webhook_test_launch_workers;
extern char *webhook_tenant;
extern int	webhook_concurrency;
extern int	webhook_per_endpoint_concurrency;
extern int	webhook_timeout_ms;
extern char *webhook_retry_schedule;
extern int	webhook_disable_after_s;
extern bool webhook_allow_private_networks;
extern char *webhook_allowed_networks;
extern char *webhook_proxy;
extern char *webhook_ca_file;
extern int	webhook_max_response_body;
extern int	webhook_max_payload_size;
extern int	webhook_retention_s;
extern int	webhook_poll_interval_ms;
extern int	webhook_retry_after_max_s;
extern char *webhook_test_fail_start_url;

/* Retry schedule parsed from webhook.retry_schedule, in milliseconds. */
#define WEBHOOK_MAX_RETRIES 64
extern int	webhook_retry_delays_ms[WEBHOOK_MAX_RETRIES];
extern int	webhook_retry_count;

/* wakeup.c: shared state and the commit-time wake-up of the worker */
#define WEBHOOK_WAKE_DISPATCH 0x1	/* events were emitted */
#define WEBHOOK_WAKE_RESCAN 0x2	/* deliveries became due behind the worker's
								 * position in the queue */
extern void webhook_shmem_request(void);
extern void webhook_wake_at_commit(uint32 reasons);
extern void webhook_worker_attach(void);
extern bool webhook_worker_claim(Oid database, int index);
extern pid_t webhook_worker_pid(Oid database, int index);
extern void webhook_wake_siblings(uint32 reasons);
extern void webhook_drain_database(Oid database);
extern bool webhook_drain_requested(void);
extern void webhook_worker_detach(bool no_extension);
extern uint32 webhook_consume_wake(void);
extern bool webhook_wake_pending(void);
extern void webhook_launcher_attach(void);
extern bool webhook_launcher_consume_rescan(void);
extern void webhook_rescan_at_commit(void);
extern uint64 webhook_durable_bound(void);
extern int	webhook_launcher_take_no_extension(Oid *databases, int max);
extern void webhook_hold_database(Oid database, TimestampTz until);
extern bool webhook_database_held(Oid database, TimestampTz now);

/* databases.c: which databases are served, and DROP DATABASE */
extern bool webhook_database_served(const char *name);
extern bool webhook_check_databases(char **newval, void **extra, GucSource source);
extern const char *webhook_served_databases(void);
extern void webhook_require_served_database(void);
extern void webhook_install_utility_hook(void);

/* endpoints.c: errors about user-supplied values */
extern char *webhook_value_for_display(const char *value);
extern void webhook_require_event_type_name(const char *name);

/* address.c: hooks of webhook.allowed_networks */
extern bool address_check_allowed_networks(char **newval, void **extra, GucSource source);
extern void address_assign_allowed_networks(const char *newval, void *extra);

/* worker.c */
extern void webhook_register_worker(void);
PGDLLEXPORT void webhook_worker_main(Datum main_arg);

#endif							/* WEBHOOK_OUTBOX_H */
