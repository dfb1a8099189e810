--
-- Masking: what list_webhooks, get_webhook and the view
-- webhook.endpoint_health show of an endpoint's credentials, and how
-- update_webhook keeps a stored credential given back masked.
--
-- One marker, ********, stands for a credential wherever one is hidden:
-- in a URL, in a header value, in an error.
--
\set SHOW_CONTEXT never

--
-- URLs: webhook.mask_url replaces the credentials of the userinfo.
-- "user:password" becomes "user:********"; a userinfo without a colon (a
-- bare token used as user name) becomes "********". The userinfo ends at
-- the last '@' before the path, query or fragment, so a password holding
-- an '@' is masked whole. Nothing else of the URL changes. Errors show a
-- URL masked by the same function (see validation).
--
SELECT label, webhook.mask_url(url) AS masked,
       webhook.mask_url(url) ~ 'pa55|p@|55@|tok123' AS shows_a_credential
  FROM (VALUES ('password',              'https://user:pa55@example.com/hooks'),
               ('@ in the password',     'https://user:p@55@example.com/hooks'),
               ('@@ in the password',    'https://user:p@@55@example.com/'),
               (': in the password',     'https://user:pa:55@example.com:8443/hooks'),
               ('%40 in the password',   'https://user:p%4055@example.com/hooks'),
               ('empty password',        'https://user:@example.com/hooks'),
               ('empty user name',       'https://:pa55@example.com/hooks'),
               ('token as user name',    'https://tok123@example.com/hooks'),
               ('@ in the token',        'https://tok@123@example.com/hooks'),
               ('IPv6 host',             'http://user:pa55@[2001:db8::1]:8080/hooks'),
               ('upper-case scheme',     'HTTPS://USER:pa55@EXAMPLE.COM/'),
               ('no path',               'https://user:pa55@example.com'),
               ('no credentials',        'https://example.com/hooks'),
               ('@ in the path',         'https://example.com/hooks/me@example.org'),
               ('@ in the query',        'https://example.com/hooks?to=a:b@c'),
               ('@ in the fragment',     'https://example.com#a:b@c'),
               ('IPv6, no credentials',  'http://[2001:db8::1]:8080/hooks'),
               -- invalid URLs, as an error may show them
               ('one slash',             'https:/user:pa55@example.com/hooks'),
               ('no slash',              'https:user:pa55@example.com/hooks'),
               ('no scheme',             'user:pa55@example.com/hooks?next=https://x'),
               ('no scheme, //',         '//user:pa55@example.com/hooks'),
               ('leading space',         ' https://user:pa55@example.com/hooks'),
               ('token, no scheme',      'tok123@example.com')
       ) AS t(label, url);
SELECT webhook.mask_url(NULL) IS NULL AS null_stays_null;

-- Listed masked, given back masked: update_webhook keeps the stored URL.
SELECT id AS basic_id FROM webhook.create_webhook('https://user:pa55@example.com/hooks/basic') \gset
SELECT id AS token_id FROM webhook.create_webhook('https://tok123@example.com/hooks/token') \gset
SELECT id AS encoded_id FROM webhook.create_webhook('https://user:p%4055@example.com/hooks/encoded') \gset
-- libcurl refuses a raw '@' in a password (it must be written %40); a URL
-- holding one, stored all the same, is masked whole too.
SELECT id AS at_id FROM webhook.create_webhook('https://user:x@example.com/hooks/at') \gset
UPDATE webhook.endpoints SET url = 'https://user:p@55@example.com/hooks/at' WHERE id = :'at_id';

SELECT w.url AS listed,
       (SELECT g.url FROM webhook.get_webhook(w.id) g) = w.url AS get_webhook_same,
       (SELECT u.url FROM webhook.update_webhook(w.id, url => w.url) u) = w.url AS updated
  FROM webhook.list_webhooks() w
 WHERE w.id IN (:'basic_id', :'token_id', :'encoded_id', :'at_id')
 ORDER BY w.id;
-- ... and the stored URLs are still the real ones.
SELECT url FROM webhook.endpoints
 WHERE id IN (:'basic_id', :'token_id', :'encoded_id', :'at_id')
 ORDER BY id;
-- A URL that is not the masked one replaces the stored URL.
SELECT url FROM webhook.update_webhook(:'basic_id', url => 'https://user:n3w@example.com/hooks/basic');
SELECT url FROM webhook.endpoints WHERE id = :'basic_id';

--
-- Headers: list_webhooks and get_webhook show every header value as
-- ********, except the values of a few standard headers that never carry
-- a credential: Accept, Accept-Charset, Accept-Encoding, Accept-Language,
-- Cache-Control, Content-Language (names compared ignoring case).
--
SELECT id AS headers_id
  FROM webhook.create_webhook('https://example.com/hooks/headers',
           headers => '{"Authorization": "Bearer tok-123", "api_key": "k-123",
                        "X-Signature": "sig-123", "X-Tenant": "acme",
                        "Cookie": "session=s-123",
                        "ACCEPT": "application/json", "Accept-Language": "de",
                        "Accept-Charset": "utf-8", "Accept-Encoding": "identity",
                        "Cache-Control": "no-cache", "Content-Language": "en"}') \gset
SELECT key, value
  FROM webhook.get_webhook(:'headers_id') g, jsonb_each_text(g.headers)
 ORDER BY key COLLATE "C";
SELECT w.headers = g.headers AS list_webhooks_same
  FROM webhook.list_webhooks() w, webhook.get_webhook(:'headers_id') g
 WHERE w.id = :'headers_id';

-- Given back masked, with one header changed, one added and one left out,
-- update_webhook keeps the stored values of the masked ones.
SELECT headers
  FROM webhook.update_webhook(:'headers_id',
           headers => (SELECT (g.headers - 'Cookie')
                              || '{"X-Tenant": "globex", "X-Region": "eu"}'
                         FROM webhook.get_webhook(:'headers_id') g));
SELECT key, value
  FROM webhook.endpoints e, jsonb_each_text(e.headers)
 WHERE e.id = :'headers_id'
 ORDER BY key COLLATE "C";
-- ******** given for a header that has no stored value is taken as it is.
SELECT headers
  FROM webhook.update_webhook(:'headers_id',
           headers => '{"Authorization": "********", "X-New": "********"}');
SELECT headers FROM webhook.endpoints WHERE id = :'headers_id';

--
-- webhook.endpoint_health shows the URL masked, to a role granted SELECT
-- on the view alone (it needs no right on webhook.mask_url).
--
CREATE ROLE regress_webhook_monitor;
GRANT USAGE ON SCHEMA webhook TO regress_webhook_monitor;
GRANT SELECT ON webhook.endpoint_health TO regress_webhook_monitor;
SET ROLE regress_webhook_monitor;
SELECT has_function_privilege('webhook.mask_url(text)', 'EXECUTE') AS may_execute_mask_url;
SELECT url FROM webhook.endpoint_health
 WHERE id IN (:'basic_id', :'token_id', :'encoded_id', :'at_id')
 ORDER BY id;
SELECT count(*) AS rows_showing_a_password
  FROM webhook.endpoint_health h
 WHERE h::text ~ 'pa55|n3w|p@55|tok123';
RESET ROLE;
-- The view's columns are those of 0.1.
SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position) AS columns
  FROM information_schema.columns
 WHERE table_schema = 'webhook' AND table_name = 'endpoint_health';

DROP OWNED BY regress_webhook_monitor;
DROP ROLE regress_webhook_monitor;
SELECT count(*) AS deleted
  FROM (VALUES (:'basic_id'), (:'token_id'), (:'encoded_id'), (:'at_id'), (:'headers_id')) AS t(id)
 WHERE webhook.delete_webhook(t.id::uuid);
