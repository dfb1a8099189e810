--
-- Delivery state and history, and sending again by hand.
--
-- webhook.events, webhook.deliveries and webhook.attempts are plain
-- relations: query and join them. webhook.retry_delivery and webhook.replay
-- queue deliveries by hand; history records them as manual.
--
-- The worker does not serve the regression database, so nothing here is
-- ever sent: the deliveries these functions queue stay pending.
--
\set SHOW_CONTEXT never

-- The columns of the contract.
SELECT table_name, column_name, data_type
  FROM information_schema.columns
 WHERE table_schema = 'webhook'
   AND table_name IN ('events', 'deliveries', 'attempts')
 ORDER BY CASE table_name WHEN 'events' THEN 1 WHEN 'deliveries' THEN 2 ELSE 3 END,
          ordinal_position;

-- Two endpoints, one subscribed to journal entries only; three events.
SELECT id AS all_id FROM webhook.create_webhook('https://example.com/all') \gset
SELECT id AS journal_id FROM webhook.create_webhook('https://example.com/journal',
                                                    '{journal_entry.*}') \gset
SELECT clock_timestamp() AS since \gset
SELECT webhook.emit('journal_entry.posted', '{"entry_id": 1}') AS posted_id \gset
SELECT webhook.emit('period.closed', '{"period": "2026-10"}') AS closed_id \gset
SELECT webhook.emit('journal_entry.reversed', '{"entry_id": 1}') AS reversed_id \gset

-- Nothing delivered yet in this database.
SELECT count(*) AS deliveries FROM webhook.deliveries;

-- Sending by hand acts on dispatched events only. Nothing serves this
-- database, so dispatch by hand, with both endpoints disabled meanwhile so
-- that it queues nothing: the events are then dispatched, and undelivered.
SELECT FROM webhook.update_webhook(:'all_id', enabled => false);
SELECT FROM webhook.update_webhook(:'journal_id', enabled => false);
SELECT deliveries FROM webhook.dispatch_new_events(1000000);
SELECT FROM webhook.update_webhook(:'all_id', enabled => true);
SELECT FROM webhook.update_webhook(:'journal_id', enabled => true);

--
-- retry_delivery(event_id, endpoint_id): queue one event for one endpoint,
-- now, whatever the endpoint's filter.
--
BEGIN;
SELECT webhook.retry_delivery(:'closed_id', :'journal_id');
SELECT event_type, status, attempts, last_status_code, last_error,
       next_attempt_at = now() AS due_now, succeeded_at, created_at = now() AS created_now
  FROM webhook.deliveries
 WHERE event_id = :'closed_id' AND endpoint_id = :'journal_id';
COMMIT;
-- The queue marks the next attempt as manual: history will record it so.
SELECT status, next_attempt_manual
  FROM webhook.delivery_log
 WHERE event_id = :'closed_id' AND endpoint_id = :'journal_id';

-- Argument errors.
SELECT label, o.code, o.message
  FROM (VALUES ('NULL event',       format('SELECT webhook.retry_delivery(NULL, %L)', :'all_id')),
               ('NULL endpoint',    format('SELECT webhook.retry_delivery(%L, NULL)', :'posted_id')),
               ('unknown endpoint', format('SELECT webhook.retry_delivery(%L, %L)', :'posted_id',
                                           '00000000-0000-0000-0000-000000000000')),
               ('unknown event',    format('SELECT webhook.retry_delivery(%L, %L)',
                                           '00000000-0000-0000-0000-000000000001', :'all_id'))
       ) AS t(label, statement),
       outcome(statement) AS o;

--
-- replay(endpoint_id, since, until DEFAULT now()): queue every event of the
-- window that the endpoint's filter selects and that it has not received.
-- Returns how many deliveries it queued.
--
SELECT webhook.replay(:'journal_id', :'since') AS queued;
SELECT d.event_type, d.status, l.next_attempt_manual
  FROM webhook.deliveries d
  JOIN webhook.delivery_log l USING (event_id, endpoint_id)
 WHERE d.endpoint_id = :'journal_id'
 ORDER BY d.event_id;
SELECT webhook.replay(:'all_id', :'since') AS queued;
SELECT event_type, status FROM webhook.deliveries
 WHERE endpoint_id = :'all_id' ORDER BY event_id;

-- Replaying again queues nothing: those deliveries are still pending.
SELECT webhook.replay(:'all_id', :'since') AS queued;

-- Failed and cancelled deliveries are queued again, succeeded ones are not.
-- (Here the outcomes are set by hand, as the worker would leave them.)
UPDATE webhook.delivery_log
   SET status = CASE event_id WHEN :'posted_id'::uuid THEN 'succeeded'
                              WHEN :'closed_id'::uuid THEN 'failed'
                              ELSE 'cancelled' END,
       attempts = 1, next_attempt_at = NULL, next_attempt_manual = false,
       succeeded_at = CASE event_id WHEN :'posted_id'::uuid THEN now() END
 WHERE endpoint_id = :'all_id';
SELECT webhook.replay(:'all_id', :'since') AS queued;
SELECT d.event_type, d.status, d.attempts, l.next_attempt_manual
  FROM webhook.deliveries d
  JOIN webhook.delivery_log l USING (event_id, endpoint_id)
 WHERE d.endpoint_id = :'all_id'
 ORDER BY d.event_id;
-- retry_delivery sends one again even if it succeeded.
SELECT webhook.retry_delivery(:'posted_id', :'all_id');
SELECT status, l.next_attempt_manual
  FROM webhook.delivery_log l
 WHERE event_id = :'posted_id' AND endpoint_id = :'all_id';

-- The window: since is inclusive, until exclusive; an empty window queues
-- nothing.
SELECT created_at AS closed_at FROM webhook.events WHERE id = :'closed_id' \gset
UPDATE webhook.delivery_log SET status = 'failed', next_attempt_at = NULL
 WHERE endpoint_id = :'all_id';
SELECT webhook.replay(:'all_id', :'closed_at', :'closed_at') AS queued_empty_window;
SELECT webhook.replay(:'all_id', :'closed_at', :'closed_at'::timestamptz + interval '1 microsecond')
       AS queued_just_that_event;
SELECT event_type, status FROM webhook.deliveries
 WHERE endpoint_id = :'all_id' AND status = 'pending';

-- Argument errors.
SELECT label, o.code, o.message
  FROM (VALUES ('NULL endpoint',    format('SELECT webhook.replay(NULL, %L)', :'since')),
               ('NULL since',       format('SELECT webhook.replay(%L, NULL)', :'all_id')),
               ('NULL until',       format('SELECT webhook.replay(%L, %L, NULL)', :'all_id', :'since')),
               ('since > until',    format('SELECT webhook.replay(%L, now(), now() - interval %L)',
                                           :'all_id', '1 hour')),
               ('unknown endpoint', format('SELECT webhook.replay(%L, %L)',
                                           '00000000-0000-0000-0000-000000000000', :'since'))
       ) AS t(label, statement),
       outcome(statement) AS o;

--
-- A disabled endpoint keeps its pending deliveries parked (next attempt at
-- 'infinity') until it is enabled again.
--
SELECT enabled FROM webhook.update_webhook(:'journal_id', enabled => false);
SELECT event_type, status, next_attempt_at FROM webhook.deliveries
 WHERE endpoint_id = :'journal_id' ORDER BY event_id;
-- Manual sends to it wait too.
SELECT webhook.retry_delivery(:'reversed_id', :'journal_id');
SELECT next_attempt_at FROM webhook.deliveries
 WHERE event_id = :'reversed_id' AND endpoint_id = :'journal_id';
BEGIN;
SELECT enabled FROM webhook.update_webhook(:'journal_id', enabled => true);
SELECT event_type, status, next_attempt_at = now() AS due_now FROM webhook.deliveries
 WHERE endpoint_id = :'journal_id' ORDER BY event_id;
COMMIT;

--
-- delete_webhook cancels the endpoint's pending deliveries; its history
-- stays queryable.
--
INSERT INTO webhook.attempt_log (event_id, endpoint_id, attempt, started_at,
                                 duration_ms, status_code, error, response_body)
VALUES (:'posted_id', :'journal_id', 1, now(), 12.5, 500, 'HTTP 500', 'oops');
SELECT webhook.delete_webhook(:'journal_id') AS deleted;
SELECT event_type, status, next_attempt_at, last_error FROM webhook.deliveries
 WHERE endpoint_id = :'journal_id' ORDER BY event_id;
SELECT attempt, status_code, error, response_body, manual FROM webhook.attempts
 WHERE endpoint_id = :'journal_id';
-- Nothing can be queued for it any more.
SELECT code, message ~ 'does not exist' AS not_found
  FROM outcome(format('SELECT webhook.retry_delivery(%L, %L)', :'posted_id', :'journal_id'));
SELECT code, message ~ 'does not exist' AS not_found
  FROM outcome(format('SELECT webhook.replay(%L, %L)', :'journal_id', :'since'));
-- The other endpoint is not affected.
SELECT count(*) AS pending_for_other FROM webhook.deliveries
 WHERE endpoint_id = :'all_id' AND status = 'pending';

-- History joins like any table.
SELECT e.event_type, count(d.*) AS deliveries,
       count(*) FILTER (WHERE d.status = 'cancelled') AS cancelled
  FROM webhook.events e
  JOIN webhook.deliveries d ON d.event_id = e.id
 WHERE e.created_at >= :'since'
 GROUP BY e.event_type
 ORDER BY e.event_type COLLATE "C";

SELECT webhook.delete_webhook(:'all_id') AS deleted;
