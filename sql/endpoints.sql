--
-- Managing endpoints: create_webhook, list_webhooks, get_webhook,
-- update_webhook, delete_webhook, rotate_secret.
--
-- (Ids, timestamps and secrets differ on every run: the queries below show
-- facts about them rather than their values.)
--
\set SHOW_CONTEXT never

--
-- create_webhook: only the URL is required. By default the endpoint gets
-- every event, is enabled, and has a generated secret: "whsec_" and the
-- base64 of 32 random bytes. The secret is returned here, once.
--
SELECT url, event_types, description, headers, enabled,
       disabled_at, disabled_reason,
       created_at = now() AS created_now,
       updated_at = created_at AS never_updated,
       secret ~ '^whsec_[A-Za-z0-9+/]{43}=$' AS secret_format,
       length(decode(substr(secret, 7), 'base64')) AS secret_key_bytes
  FROM webhook.create_webhook('https://example.com/hooks/all');
SELECT id AS all_id, secret AS all_secret
  FROM webhook.endpoints WHERE url = 'https://example.com/hooks/all' \gset

-- Every setting at once.
SELECT url, event_types, description, headers, enabled,
       secret = 'a-secret-of-at-least-16-chars' AS secret_as_given
  FROM webhook.create_webhook(
           url         => 'https://example.com/hooks/ledger',
           event_types => ARRAY['journal_entry.posted', 'period.*'],
           secret      => 'a-secret-of-at-least-16-chars',
           description => 'General ledger sync',
           headers     => '{"Authorization": "Bearer tok-123", "X-Tenant": "acme"}',
           enabled     => true);
SELECT id AS ledger_id FROM webhook.endpoints
 WHERE url = 'https://example.com/hooks/ledger' \gset

-- Created disabled: disabled_at and disabled_reason say when and why.
SELECT enabled, disabled_at = now() AS disabled_now, disabled_reason
  FROM webhook.create_webhook('https://example.com/hooks/later', enabled => false);
SELECT id AS later_id FROM webhook.endpoints
 WHERE url = 'https://example.com/hooks/later' \gset

-- Generated secrets differ from one endpoint to the next.
SELECT count(DISTINCT secret) AS distinct_secrets, count(*) AS endpoints
  FROM webhook.endpoints;

--
-- list_webhooks: every endpoint, in creation order, with the columns of
-- create_webhook but the secret. Credential-carrying header values
-- (Authorization, Cookie, *token*, *secret*, ...) are masked.
--
SELECT * FROM webhook.list_webhooks() LIMIT 0;
SELECT url, event_types, description, headers, enabled, disabled_reason
  FROM webhook.list_webhooks();
SELECT count(*) FILTER (WHERE id = :'all_id') AS all_listed,
       count(*) FILTER (WHERE id = :'ledger_id') AS ledger_listed,
       count(*) FILTER (WHERE id = :'later_id') AS later_listed
  FROM webhook.list_webhooks();
SELECT bool_or(w::text LIKE '%' || :'all_secret' || '%') AS shows_a_secret
  FROM webhook.list_webhooks() AS w;

-- The stored headers keep their real values: the worker sends them.
SELECT headers FROM webhook.endpoints WHERE id = :'ledger_id';

-- A password in a URL is listed masked; read back and passed to
-- update_webhook, the stored one stays.
SELECT id AS basic_id FROM webhook.create_webhook('https://user:p4ss@example.com/hooks/basic') \gset
SELECT url FROM webhook.get_webhook(:'basic_id');
SELECT url FROM webhook.update_webhook(:'basic_id', url => (SELECT url FROM webhook.get_webhook(:'basic_id')));
SELECT url FROM webhook.endpoints WHERE id = :'basic_id';
SELECT webhook.delete_webhook(:'basic_id') AS deleted;

-- Headers read back masked and passed to update_webhook keep their stored
-- value; the others change as given.
SELECT headers FROM webhook.update_webhook(:'ledger_id',
    headers => (SELECT headers || '{"X-Tenant": "acme-2"}' FROM webhook.get_webhook(:'ledger_id')));
SELECT headers FROM webhook.endpoints WHERE id = :'ledger_id';
SELECT headers FROM webhook.update_webhook(:'ledger_id',
    headers => '{"Authorization": "Bearer tok-123", "X-Tenant": "acme"}');

--
-- get_webhook: one endpoint, same columns; an unknown id is an error.
--
SELECT url, event_types, description, headers, enabled
  FROM webhook.get_webhook(:'ledger_id');
SELECT * FROM webhook.get_webhook('00000000-0000-0000-0000-000000000000');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM webhook.get_webhook(NULL);
\echo :LAST_ERROR_SQLSTATE

--
-- update_webhook has PATCH semantics: a NULL (or omitted) argument leaves
-- its field as it is. It returns the endpoint as get_webhook does.
--
SELECT updated_at AS ledger_updated_at FROM webhook.endpoints WHERE id = :'ledger_id' \gset
SELECT url, event_types, description, headers, enabled,
       updated_at > :'ledger_updated_at' AS updated_at_moved
  FROM webhook.update_webhook(:'ledger_id', description => 'GL sync (prod)');
SELECT url, event_types, description, headers
  FROM webhook.update_webhook(:'ledger_id', url => 'https://hooks.example.net/ledger',
                              event_types => '{journal_entry.*,account.created}');
-- No change asked, nothing changes.
SELECT url, event_types, description, headers, enabled
  FROM webhook.update_webhook(:'ledger_id');
-- '{}' resets the filter to every event (stored as NULL, like the default).
SELECT event_types, event_types IS NULL AS every_event
  FROM webhook.update_webhook(:'ledger_id', event_types => '{}');
-- '{}' also removes every custom header; other headers replace the old set.
SELECT headers FROM webhook.update_webhook(:'ledger_id', headers => '{"X-Tenant": "globex"}');
SELECT headers FROM webhook.update_webhook(:'ledger_id', headers => '{}');
-- The secret is not an argument of update_webhook: see rotate_secret.
SELECT secret = 'a-secret-of-at-least-16-chars' AS secret_unchanged
  FROM webhook.endpoints WHERE id = :'ledger_id';

-- Disabling by hand sets disabled_at and disabled_reason ...
SELECT enabled, disabled_at = now() AS disabled_now,
       disabled_reason = 'disabled by ' || session_user AS reason_names_user
  FROM webhook.update_webhook(:'ledger_id', enabled => false);
SELECT disabled_at AS ledger_disabled_at FROM webhook.endpoints WHERE id = :'ledger_id' \gset
-- ... disabling it again keeps them ...
SELECT enabled, disabled_at = :'ledger_disabled_at' AS same_disabled_at
  FROM webhook.update_webhook(:'ledger_id', enabled => false);
-- ... other changes leave it disabled ...
SELECT enabled, disabled_at IS NOT NULL AS has_disabled_at, description
  FROM webhook.update_webhook(:'ledger_id', description => 'GL sync (paused)');
-- ... and enabling clears them.
SELECT enabled, disabled_at, disabled_reason
  FROM webhook.update_webhook(:'ledger_id', enabled => true);
SELECT enabled, disabled_at, disabled_reason
  FROM webhook.update_webhook(:'later_id', enabled => true);

-- An unknown id is an error.
SELECT * FROM webhook.update_webhook('00000000-0000-0000-0000-000000000000',
                                     description => 'nobody');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM webhook.update_webhook(NULL, description => 'nobody');
\echo :LAST_ERROR_SQLSTATE

--
-- rotate_secret: a new generated secret, returned once. For the grace
-- period (24 hours unless given) deliveries are signed with both the old
-- and the new secret; the old one is kept until then.
--
-- (Each rotation below is checked within its transaction, where now() is
-- the time it happened.)
SELECT secret AS old_secret FROM webhook.endpoints WHERE id = :'all_id' \gset
BEGIN;
SELECT webhook.rotate_secret(:'all_id') AS new_secret \gset
SELECT :'new_secret' ~ '^whsec_[A-Za-z0-9+/]{43}=$' AS secret_format,
       :'new_secret' <> :'old_secret' AS secret_changed;
SELECT secret = :'new_secret' AS signs_with_new,
       previous_secret = :'old_secret' AS also_signs_with_old,
       previous_secret_expires_at = now() + interval '24 hours' AS old_kept_24_hours
  FROM webhook.endpoints WHERE id = :'all_id';
COMMIT;
-- A grace period of its own ...
BEGIN;
SELECT webhook.rotate_secret(:'all_id', interval '1 hour') AS newer_secret \gset
SELECT secret = :'newer_secret' AS signs_with_new,
       previous_secret = :'new_secret' AS also_signs_with_previous,
       previous_secret_expires_at = now() + interval '1 hour' AS kept_1_hour
  FROM webhook.endpoints WHERE id = :'all_id';
COMMIT;
-- ... or none: the old secret stops signing at once.
SELECT webhook.rotate_secret(:'all_id', interval '0') AS newest_secret \gset
SELECT secret = :'newest_secret' AS signs_with_new,
       previous_secret IS NULL AS old_dropped,
       previous_secret_expires_at IS NULL AS no_expiry
  FROM webhook.endpoints WHERE id = :'all_id';
-- Errors: unknown or NULL id, negative or NULL grace. Nothing changes.
SELECT webhook.rotate_secret('00000000-0000-0000-0000-000000000000');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.rotate_secret(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.rotate_secret(:'all_id', interval '-1 hour');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.rotate_secret(:'all_id', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT secret = :'newest_secret' AS secret_unchanged
  FROM webhook.endpoints WHERE id = :'all_id';

--
-- delete_webhook: true when it deleted the endpoint, false when there was
-- none.
--
SELECT webhook.delete_webhook(:'later_id') AS deleted;
SELECT webhook.delete_webhook(:'later_id') AS deleted_again;
SELECT webhook.delete_webhook('00000000-0000-0000-0000-000000000000') AS deleted_unknown;
SELECT webhook.delete_webhook(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT code, message ~ '^webhook endpoint ".*" does not exist$' AS not_found
  FROM outcome(format('SELECT webhook.get_webhook(%L)', :'later_id'));
SELECT url FROM webhook.list_webhooks();

-- Deleting in a transaction that rolls back deletes nothing.
BEGIN;
SELECT webhook.delete_webhook(:'ledger_id') AS deleted;
ROLLBACK;
SELECT url FROM webhook.get_webhook(:'ledger_id');

SELECT webhook.delete_webhook(id) AS deleted FROM webhook.list_webhooks();
SELECT count(*) AS endpoints FROM webhook.list_webhooks();
