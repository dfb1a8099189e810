/*-------------------------------------------------------------------------
 *
 * wakeup.c
 *		Shared memory of webhook_outbox and the commit-time wake-up of the
 *		delivery worker.
 *
 * webhook.emit marks the transaction; when it commits, a transaction
 * callback sets an atomic flag in shared memory and, only if the flag was
 * clear, the worker's latch. Concurrent commits thus coalesce into one
 * wake-up, and no lock is taken on the commit path (no NOTIFY). Events that
 * commit without a callback (COMMIT PREPARED) are found by the worker's
 * poll timeout.
 *
 *-------------------------------------------------------------------------
 */
#include "webhook_outbox.h"

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"

#include <signal.h>

typedef struct WebhookShared
{
	pg_atomic_uint32 wake_pending;	/* WEBHOOK_WAKE_* bits: set by committers,
									 * cleared by the worker */
	Latch	   *worker_latch;	/* NULL while no worker runs */

	/*
	 * The delivery worker serving a database: at most one, whatever happens
	 * to the launcher (a launcher that died by FATAL leaves its worker
	 * running, and its successor must not start a second one that would
	 * send every delivery again). Guarded by lock.
	 */
	slock_t		lock;
	Oid			worker_database;
	pid_t		worker_pid;		/* 0 when none */
} WebhookShared;

static WebhookShared *wakeup_shared = NULL;
static uint32 wakeup_in_xact = 0;	/* bits to set if this transaction commits */
static bool wakeup_callback_registered = false;

static void wakeup_shmem_startup(void);
static void webhook_wake(uint32 reasons);

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type wakeup_prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type wakeup_prev_shmem_startup_hook = NULL;

#if PG_VERSION_NUM >= 150000
static void
wakeup_shmem_request_hook(void)
{
	if (wakeup_prev_shmem_request_hook)
		wakeup_prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(WebhookShared)));
}
#endif

/*
 * Reserve shared memory for the wake-up state (called from _PG_init).
 */
void
webhook_shmem_request(void)
{
#if PG_VERSION_NUM >= 150000
	wakeup_prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = wakeup_shmem_request_hook;
#else
	RequestAddinShmemSpace(MAXALIGN(sizeof(WebhookShared)));
#endif
	wakeup_prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = wakeup_shmem_startup;
}

/*
 * Create or attach to the shared state.
 */
static void
wakeup_shmem_startup(void)
{
	bool		found;

	if (wakeup_prev_shmem_startup_hook)
		wakeup_prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	wakeup_shared = ShmemInitStruct("webhook_outbox", sizeof(WebhookShared), &found);
	if (!found)
	{
		pg_atomic_init_u32(&wakeup_shared->wake_pending, 0);
		wakeup_shared->worker_latch = NULL;
		SpinLockInit(&wakeup_shared->lock);
		wakeup_shared->worker_database = InvalidOid;
		wakeup_shared->worker_pid = 0;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Wake the worker with reasons (WEBHOOK_WAKE_* bits), unless a wake-up
 * with those reasons is pending already.
 */
static void
webhook_wake(uint32 reasons)
{
	Latch	   *latch;

	if (wakeup_shared == NULL)
		return;
	if ((pg_atomic_read_u32(&wakeup_shared->wake_pending) & reasons) == reasons)
		return;
	if ((pg_atomic_fetch_or_u32(&wakeup_shared->wake_pending, reasons) & reasons) == reasons)
		return;
	latch = wakeup_shared->worker_latch;
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * At commit of a transaction that emitted (or changed deliveries), wake the
 * worker.
 */
static void
wakeup_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wakeup_in_xact != 0)
				webhook_wake(wakeup_in_xact);
			wakeup_in_xact = 0;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			wakeup_in_xact = 0;
			break;
		default:
			break;
	}
}

/*
 * Remember to wake the worker, for these reasons, if the current
 * transaction commits.
 */
void
webhook_wake_at_commit(uint32 reasons)
{
	if (!wakeup_callback_registered)
	{
		RegisterXactCallback(wakeup_xact_callback, NULL);
		wakeup_callback_registered = true;
	}
	wakeup_in_xact |= reasons;
}

/*
 * The pid of the live delivery worker serving database, or 0. A slot whose
 * process is gone (it cannot normally outlive its process: the worker
 * clears it on exit, and a crash resets shared memory) counts as free.
 */
pid_t
webhook_worker_pid(Oid database)
{
	pid_t		pid = 0;

	if (wakeup_shared == NULL)
		return 0;
	SpinLockAcquire(&wakeup_shared->lock);
	if (wakeup_shared->worker_database == database)
		pid = wakeup_shared->worker_pid;
	SpinLockRelease(&wakeup_shared->lock);
	if (pid != 0 && kill(pid, 0) != 0 && errno == ESRCH)
		pid = 0;
	return pid;
}

/*
 * Claim the slot of the delivery worker for database; false if another
 * live worker holds it (or one for another database: one is served).
 */
bool
webhook_worker_claim(Oid database)
{
	pid_t		holder;
	bool		claimed = false;

	if (wakeup_shared == NULL)
		return true;
	SpinLockAcquire(&wakeup_shared->lock);
	holder = wakeup_shared->worker_pid;
	SpinLockRelease(&wakeup_shared->lock);
	/* kill() outside the spinlock; the claim below rechecks the holder */
	if (holder != 0 && holder != MyProcPid && kill(holder, 0) != 0 && errno == ESRCH)
		holder = 0;
	SpinLockAcquire(&wakeup_shared->lock);
	if (wakeup_shared->worker_pid == holder && (holder == 0 || holder == MyProcPid))
	{
		wakeup_shared->worker_database = database;
		wakeup_shared->worker_pid = MyProcPid;
		claimed = true;
	}
	SpinLockRelease(&wakeup_shared->lock);
	return claimed;
}

/*
 * Publish the worker's latch so committers can wake it.
 */
void
webhook_worker_attach(void)
{
	if (wakeup_shared == NULL)
		return;
	wakeup_shared->worker_latch = MyLatch;
	pg_write_barrier();
	/* Whatever committed before we were listening is found by the first pass. */
	pg_atomic_write_u32(&wakeup_shared->wake_pending, WEBHOOK_WAKE_DISPATCH | WEBHOOK_WAKE_RESCAN);
}

/*
 * Withdraw the worker's latch and free its slot at exit.
 */
void
webhook_worker_detach(void)
{
	if (wakeup_shared == NULL)
		return;
	SpinLockAcquire(&wakeup_shared->lock);
	if (wakeup_shared->worker_pid == MyProcPid)
	{
		wakeup_shared->worker_latch = NULL;
		wakeup_shared->worker_pid = 0;
		wakeup_shared->worker_database = InvalidOid;
	}
	SpinLockRelease(&wakeup_shared->lock);
}

/*
 * Take the pending wake-up: its WEBHOOK_WAKE_* bits, 0 when none.
 */
uint32
webhook_consume_wake(void)
{
	if (wakeup_shared == NULL)
		return WEBHOOK_WAKE_DISPATCH | WEBHOOK_WAKE_RESCAN;
	return pg_atomic_exchange_u32(&wakeup_shared->wake_pending, 0);
}

/*
 * Whether a wake-up is pending (left for later by the worker).
 */
bool
webhook_wake_pending(void)
{
	return wakeup_shared != NULL && pg_atomic_read_u32(&wakeup_shared->wake_pending) != 0;
}

/*
 * webhook.wake_worker(): wake the worker when the calling transaction
 * commits, to dispatch and to look at every endpoint's due deliveries from
 * the oldest (used by manual retries, replays and re-enabling, which make
 * deliveries due with their transaction's start time).
 */
PG_FUNCTION_INFO_V1(webhook_wake_worker);
Datum
webhook_wake_worker(PG_FUNCTION_ARGS)
{
	webhook_wake_at_commit(WEBHOOK_WAKE_DISPATCH | WEBHOOK_WAKE_RESCAN);
	PG_RETURN_VOID();
}
