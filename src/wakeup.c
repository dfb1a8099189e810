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
#include "access/xlog.h"
#include "replication/syncrep.h"
#include "replication/walsender.h"
#include "postmaster/bgworker.h"
#include "utils/timestamp.h"

#include <signal.h>

/*
 * One delivery worker: the database it serves, and how committers there
 * wake it. A slot is free while its pid is 0 (or its process is gone).
 */
typedef struct WorkerSlot
{
	Oid			database;
	int			index;			/* which of the database's webhook.workers */
	pid_t		pid;
	Latch	   *latch;			/* NULL until the worker listens */
	pg_atomic_uint32 wake_pending;	/* WEBHOOK_WAKE_* bits: set by committers,
									 * cleared by the worker */
	bool		no_extension;	/* it left: the extension is not installed */
	bool		drain;			/* asked to finish what it has, and leave */
} WorkerSlot;

/* A database whose worker is not to be started again until a time. */
typedef struct WorkerHold
{
	Oid			database;
	TimestampTz until;
} WorkerHold;

#define WAKEUP_HOLDS 8

typedef struct WebhookShared
{
	/*
	 * At most one worker serves a database, whatever happens to the
	 * launcher (a launcher that died by FATAL leaves its workers running,
	 * and its successor must not start second ones that would send every
	 * delivery again). Slots and holds are guarded by lock.
	 */
	slock_t		lock;
	Latch	   *launcher_latch;
	pg_atomic_uint32 launcher_rescan;	/* an extension was created: look again */
	WorkerHold	holds[WAKEUP_HOLDS];	/* databases being dropped */

	/*
	 * Durable before delivered (see webhook_durable_bound): transactions
	 * that emitted and commit without waiting for what delivery needs
	 * (synchronous_commit = off, or below remote_flush where synchronous
	 * standbys are named) count themselves in async_emitters from before
	 * their commit record until they have published its end here.
	 */
	pg_atomic_uint32 async_emitters;
	pg_atomic_uint64 async_commit_end;
	int			slot_count;
	WorkerSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} WebhookShared;

static WebhookShared *wakeup_shared = NULL;
static WorkerSlot *wakeup_my_slot = NULL;	/* the worker's own */
static uint32 wakeup_in_xact = 0;	/* bits to set if this transaction commits */
static bool wakeup_rescan_in_xact = false;	/* wake the launcher at commit */
static bool wakeup_async_counted = false;	/* counted in async_emitters */
static bool wakeup_callback_registered = false;

static void wakeup_shmem_startup(void);
static void webhook_wake(uint32 reasons);

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type wakeup_prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type wakeup_prev_shmem_startup_hook = NULL;

/* One slot per background worker process the server may run. */
static Size
wakeup_shmem_size(void)
{
	return add_size(offsetof(WebhookShared, slots),
					mul_size(max_worker_processes, sizeof(WorkerSlot)));
}

#if PG_VERSION_NUM >= 150000
static void
wakeup_shmem_request_hook(void)
{
	if (wakeup_prev_shmem_request_hook)
		wakeup_prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(wakeup_shmem_size()));
}
#endif

/*
 * Ask for the shared memory (from _PG_init).
 */
void
webhook_shmem_request(void)
{
#if PG_VERSION_NUM >= 150000
	wakeup_prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = wakeup_shmem_request_hook;
#else
	RequestAddinShmemSpace(MAXALIGN(wakeup_shmem_size()));
#endif
	wakeup_prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = wakeup_shmem_startup;
}

static void
wakeup_shmem_startup(void)
{
	bool		found;

	if (wakeup_prev_shmem_startup_hook)
		wakeup_prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	wakeup_shared = ShmemInitStruct("webhook_outbox", wakeup_shmem_size(), &found);
	if (!found)
	{
		SpinLockInit(&wakeup_shared->lock);
		wakeup_shared->launcher_latch = NULL;
		pg_atomic_init_u32(&wakeup_shared->launcher_rescan, 0);
		memset(wakeup_shared->holds, 0, sizeof(wakeup_shared->holds));
		pg_atomic_init_u32(&wakeup_shared->async_emitters, 0);
		pg_atomic_init_u64(&wakeup_shared->async_commit_end, 0);
		wakeup_shared->slot_count = max_worker_processes;
		for (int i = 0; i < wakeup_shared->slot_count; i++)
		{
			WorkerSlot *slot = &wakeup_shared->slots[i];

			slot->database = InvalidOid;
			slot->index = 0;
			slot->pid = 0;
			slot->latch = NULL;
			pg_atomic_init_u32(&slot->wake_pending, 0);
			slot->no_extension = false;
			slot->drain = false;
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Set reasons in the wake-up of each worker serving database, and its latch
 * unless they were set already. Slots are read without the lock: a
 * committer that misses a worker just starting is covered by the worker's
 * first pass, which takes everything committed before it.
 */
static void
wakeup_database(Oid database, uint32 reasons, bool but_me)
{
	if (wakeup_shared == NULL)
		return;
	for (int i = 0; i < wakeup_shared->slot_count; i++)
	{
		WorkerSlot *slot = &wakeup_shared->slots[i];
		Latch	   *latch;

		uint32		bits = reasons;

		if (slot->database != database || slot->pid == 0 || (but_me && slot == wakeup_my_slot))
			continue;
		/*
		 * A commit that emitted wakes the dispatching worker (the first);
		 * it wakes the others once it has dispatched (but_me).
		 */
		if (!but_me && slot->index != 0)
			bits &= ~WEBHOOK_WAKE_DISPATCH;
		if (bits == 0)
			continue;
		if ((pg_atomic_read_u32(&slot->wake_pending) & bits) == bits)
			continue;
		if ((pg_atomic_fetch_or_u32(&slot->wake_pending, bits) & bits) == bits)
			continue;
		latch = slot->latch;
		if (latch != NULL)
			SetLatch(latch);
	}
}

static void
webhook_wake(uint32 reasons)
{
	wakeup_database(MyDatabaseId, reasons, false);
}

/*
 * Wake the other workers of this worker's database (after a dispatch: the
 * new deliveries of their endpoints are theirs to fetch).
 */
void
webhook_wake_siblings(uint32 reasons)
{
	if (wakeup_my_slot != NULL)
		wakeup_database(wakeup_my_slot->database, reasons, true);
}

/*
 * Wake the launcher to look for databases to serve.
 */
static void
wakeup_launcher(void)
{
	Latch	   *latch;

	if (wakeup_shared == NULL)
		return;
	pg_atomic_write_u32(&wakeup_shared->launcher_rescan, 1);
	latch = wakeup_shared->launcher_latch;
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * Whether this transaction's commit returns before it is as durable as
 * delivery requires: flushed to disk, and where synchronous standbys are
 * named, flushed by them too. (A prepared transaction's COMMIT PREPARED
 * always waits for both.)
 */
static bool
wakeup_commit_is_weak(void)
{
	if (wakeup_shared == NULL)
		return false;
	if (synchronous_commit == SYNCHRONOUS_COMMIT_OFF)
		return true;
	return SyncRepStandbyNames != NULL && SyncRepStandbyNames[0] != '\0' &&
		max_wal_senders > 0 && synchronous_commit < SYNCHRONOUS_COMMIT_REMOTE_FLUSH;
}

/*
 * An end of WAL up to which every transaction that emitted and was
 * committed when this is called (every one a dispatch snapshot taken
 * before may see) is written: until it is flushed, and confirmed by the
 * synchronous standbys, nothing dispatched may be sent. A transaction
 * whose commit waits for that itself needs nothing: it is visible only
 * once its commit is flushed (and confirmed). One that does not counts
 * itself before its commit record and publishes the record's end before
 * it uncounts: while any is counted, the current end of WAL bounds them
 * all; when none is, the greatest end published does. That never falls,
 * and once flushed costs nothing more.
 */
uint64
webhook_durable_bound(void)
{
	if (wakeup_shared == NULL)
		return InvalidXLogRecPtr;
	pg_memory_barrier();
	if (pg_atomic_read_u32(&wakeup_shared->async_emitters) > 0)
		return GetXLogInsertRecPtr();
	pg_read_barrier();
	return pg_atomic_read_u64(&wakeup_shared->async_commit_end);
}

static void
wakeup_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if ((wakeup_in_xact & WEBHOOK_WAKE_DISPATCH) && wakeup_commit_is_weak())
			{
				pg_atomic_fetch_add_u32(&wakeup_shared->async_emitters, 1);
				wakeup_async_counted = true;
			}
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wakeup_async_counted)
			{
				/* publish the end of our commit record, then uncount */
				uint64		seen = pg_atomic_read_u64(&wakeup_shared->async_commit_end);

				while (seen < XactLastCommitEnd &&
					   !pg_atomic_compare_exchange_u64(&wakeup_shared->async_commit_end,
													   &seen, XactLastCommitEnd))
					;
				pg_atomic_fetch_sub_u32(&wakeup_shared->async_emitters, 1);
				wakeup_async_counted = false;
			}
			if (wakeup_in_xact != 0)
				webhook_wake(wakeup_in_xact);
			if (wakeup_rescan_in_xact)
				wakeup_launcher();
			wakeup_in_xact = 0;
			wakeup_rescan_in_xact = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			if (wakeup_async_counted)
			{
				pg_atomic_fetch_sub_u32(&wakeup_shared->async_emitters, 1);
				wakeup_async_counted = false;
			}
			wakeup_in_xact = 0;
			wakeup_rescan_in_xact = false;
			break;
		default:
			break;
	}
}

/*
 * Remember to wake the worker, for these reasons, if the current
 * transaction commits.
 */
static void
wakeup_register_callback(void)
{
	if (!wakeup_callback_registered)
	{
		RegisterXactCallback(wakeup_xact_callback, NULL);
		wakeup_callback_registered = true;
	}
}

void
webhook_wake_at_commit(uint32 reasons)
{
	wakeup_register_callback();
	wakeup_in_xact |= reasons;
}

/*
 * Whether a live process has pid (a slot cannot normally outlive its
 * process: the worker clears it on exit, and a crash resets shared memory).
 */
static bool
wakeup_alive(pid_t pid)
{
	return pid != 0 && !(kill(pid, 0) != 0 && errno == ESRCH);
}

/*
 * The pid of the live delivery worker serving database as its worker
 * number index (any of them when index < 0), or 0.
 */
pid_t
webhook_worker_pid(Oid database, int index)
{
	pid_t		pid = 0;

	if (wakeup_shared == NULL)
		return 0;
	SpinLockAcquire(&wakeup_shared->lock);
	for (int i = 0; i < wakeup_shared->slot_count; i++)
		if (wakeup_shared->slots[i].database == database && wakeup_shared->slots[i].pid != 0 &&
			(index < 0 || wakeup_shared->slots[i].index == index) &&
			(pid == 0 || !wakeup_alive(pid)))
			pid = wakeup_shared->slots[i].pid;
	SpinLockRelease(&wakeup_shared->lock);
	return wakeup_alive(pid) ? pid : 0;
}

/*
 * Ask every worker of database to finish what it has in flight, record it
 * and leave (webhook.workers changed: no two workers may ever own one
 * endpoint at once).
 */
void
webhook_drain_database(Oid database)
{
	if (wakeup_shared == NULL)
		return;
	SpinLockAcquire(&wakeup_shared->lock);
	for (int i = 0; i < wakeup_shared->slot_count; i++)
		if (wakeup_shared->slots[i].database == database && wakeup_shared->slots[i].pid != 0)
		{
			wakeup_shared->slots[i].drain = true;
			if (wakeup_shared->slots[i].latch != NULL)
				SetLatch(wakeup_shared->slots[i].latch);
		}
	SpinLockRelease(&wakeup_shared->lock);
}

/*
 * Whether this worker is asked to drain and leave.
 */
bool
webhook_drain_requested(void)
{
	return wakeup_my_slot != NULL && wakeup_my_slot->drain;
}

/*
 * Clear the slot at index if pid still holds it and is gone; whether it did.
 */
static bool
wakeup_clear_if_gone(int index, pid_t pid)
{
	bool		cleared = false;

	if (pid == 0 || wakeup_alive(pid))
		return false;
	SpinLockAcquire(&wakeup_shared->lock);
	if (wakeup_shared->slots[index].pid == pid)
	{
		wakeup_shared->slots[index].pid = 0;
		wakeup_shared->slots[index].latch = NULL;
		wakeup_shared->slots[index].database = InvalidOid;
		cleared = true;
	}
	SpinLockRelease(&wakeup_shared->lock);
	return cleared;
}

/*
 * Claim a slot for the delivery worker of database; false if another live
 * worker serves it, or no slot is free.
 */
bool
webhook_worker_claim(Oid database, int index)
{
	if (wakeup_shared == NULL)
		return true;
	for (int attempt = 0; attempt < 3; attempt++)
	{
		int			holder = -1;
		int			free_slot = -1;
		pid_t		holder_pid = 0;
		bool		cleared = false;

		SpinLockAcquire(&wakeup_shared->lock);
		for (int i = 0; i < wakeup_shared->slot_count; i++)
		{
			WorkerSlot *slot = &wakeup_shared->slots[i];

			if (slot->pid != 0 && slot->database == database && slot->index == index)
				holder = i;
			/* a free slot, preferably not one that carries a report */
			else if (slot->pid == 0 &&
					 (free_slot < 0 || (wakeup_shared->slots[free_slot].no_extension &&
										!slot->no_extension)))
				free_slot = i;
		}
		if (holder >= 0)
			holder_pid = wakeup_shared->slots[holder].pid;
		else if (free_slot >= 0)
		{
			WorkerSlot *slot = &wakeup_shared->slots[free_slot];

			slot->database = database;
			slot->index = index;
			slot->pid = MyProcPid;
			slot->latch = NULL;
			slot->no_extension = false;
			slot->drain = false;
			wakeup_my_slot = slot;
		}
		SpinLockRelease(&wakeup_shared->lock);

		if (wakeup_my_slot != NULL)
			return true;
		if (holder >= 0)
		{
			/* another worker serves it, unless its process is gone */
			if (!wakeup_clear_if_gone(holder, holder_pid))
				return false;
			continue;
		}
		/* every slot taken: some may belong to processes gone */
		for (int i = 0; i < wakeup_shared->slot_count; i++)
			cleared |= wakeup_clear_if_gone(i, wakeup_shared->slots[i].pid);
		if (!cleared)
			return false;
	}
	return false;
}

/*
 * Publish the worker's latch so committers can wake it.
 */
void
webhook_worker_attach(void)
{
	if (wakeup_my_slot == NULL)
		return;
	wakeup_my_slot->latch = MyLatch;
	pg_write_barrier();
	/* Whatever committed before we were listening is found by the first pass. */
	pg_atomic_write_u32(&wakeup_my_slot->wake_pending, WEBHOOK_WAKE_DISPATCH | WEBHOOK_WAKE_RESCAN);
}

/*
 * Withdraw the worker's latch and free its slot at exit; no_extension says
 * it leaves because the extension is not installed in its database.
 */
void
webhook_worker_detach(bool no_extension)
{
	if (wakeup_my_slot == NULL)
		return;
	SpinLockAcquire(&wakeup_shared->lock);
	if (wakeup_my_slot->pid == MyProcPid)
	{
		wakeup_my_slot->latch = NULL;
		wakeup_my_slot->pid = 0;
		wakeup_my_slot->no_extension = no_extension;
		if (!no_extension)
			wakeup_my_slot->database = InvalidOid;
	}
	SpinLockRelease(&wakeup_shared->lock);
	wakeup_my_slot = NULL;
}

/*
 * Take the pending wake-up: its WEBHOOK_WAKE_* bits, 0 when none.
 */
uint32
webhook_consume_wake(void)
{
	if (wakeup_my_slot == NULL)
		return WEBHOOK_WAKE_DISPATCH | WEBHOOK_WAKE_RESCAN;
	return pg_atomic_exchange_u32(&wakeup_my_slot->wake_pending, 0);
}

/*
 * Whether a wake-up is pending (left for later by the worker).
 */
bool
webhook_wake_pending(void)
{
	return wakeup_my_slot != NULL && pg_atomic_read_u32(&wakeup_my_slot->wake_pending) != 0;
}

/*
 * The launcher: publish its latch; take the request to look again.
 */
void
webhook_launcher_attach(void)
{
	if (wakeup_shared != NULL)
		wakeup_shared->launcher_latch = MyLatch;
}

bool
webhook_launcher_consume_rescan(void)
{
	return wakeup_shared != NULL &&
		pg_atomic_exchange_u32(&wakeup_shared->launcher_rescan, 0) != 0;
}

/*
 * The databases whose workers left for want of the extension since the
 * last call (the launcher then waits for a CREATE EXTENSION before
 * starting them again); at most max of them, into databases.
 */
int
webhook_launcher_take_no_extension(Oid *databases, int max)
{
	int			count = 0;

	if (wakeup_shared == NULL)
		return 0;
	SpinLockAcquire(&wakeup_shared->lock);
	for (int i = 0; i < wakeup_shared->slot_count && count < max; i++)
	{
		WorkerSlot *slot = &wakeup_shared->slots[i];

		if (slot->pid == 0 && slot->no_extension)
		{
			databases[count++] = slot->database;
			slot->no_extension = false;
			slot->database = InvalidOid;
		}
	}
	SpinLockRelease(&wakeup_shared->lock);
	return count;
}

/*
 * Keep the launcher from starting a worker for database until until (a
 * DROP DATABASE is under way); whether database is held now.
 */
void
webhook_hold_database(Oid database, TimestampTz until)
{
	int			chosen = 0;

	if (wakeup_shared == NULL)
		return;
	SpinLockAcquire(&wakeup_shared->lock);
	for (int i = 0; i < WAKEUP_HOLDS; i++)
	{
		if (wakeup_shared->holds[i].database == database)
		{
			chosen = i;
			break;
		}
		if (wakeup_shared->holds[i].until < wakeup_shared->holds[chosen].until)
			chosen = i;
	}
	wakeup_shared->holds[chosen].database = database;
	wakeup_shared->holds[chosen].until = until;
	SpinLockRelease(&wakeup_shared->lock);
}

bool
webhook_database_held(Oid database, TimestampTz now)
{
	bool		held = false;

	if (wakeup_shared == NULL)
		return false;
	SpinLockAcquire(&wakeup_shared->lock);
	for (int i = 0; i < WAKEUP_HOLDS; i++)
		if (wakeup_shared->holds[i].database == database && wakeup_shared->holds[i].until > now)
			held = true;
	SpinLockRelease(&wakeup_shared->lock);
	return held;
}

/*
 * Have the launcher look for databases to serve when the current
 * transaction commits (one that creates or updates the extension), rather
 * than at its next look.
 */
void
webhook_rescan_at_commit(void)
{
	wakeup_register_callback();
	wakeup_rescan_in_xact = true;
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
