--
-- Validation of endpoint settings: every rule, each failure with its
-- SQLSTATE, and nothing changed by a call that fails.
--
-- create_webhook(url, event_types, secret, description, headers, enabled)
-- and update_webhook(id, url, event_types, description, headers, enabled)
-- apply the same rules.
--
\set SHOW_CONTEXT never

SELECT count(*) AS endpoints_before FROM webhook.endpoints \gset

--
-- url: an absolute http or https URL with a host, at most 1024 characters.
--
SELECT webhook.create_webhook(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_webhook('ftp://example.com/hooks');
\echo :LAST_ERROR_SQLSTATE

SELECT label, o.code, o.message, o.detail
  FROM (VALUES ('empty',                ''),
               ('relative',             '/hooks/ledger'),
               ('no scheme',            'example.com/hooks'),
               ('scheme only',          'https:'),
               ('ftp',                  'ftp://example.com/hooks'),
               ('file',                 'file:///etc/passwd'),
               ('javascript',           'javascript:alert(1)'),
               ('http without host',    'http://'),
               ('https without host',   'https:///hooks'),
               ('port without host',    'http://:8080/hooks'),
               ('space',                'https://example.com/my hooks'),
               ('leading space',        ' https://example.com/hooks'),
               ('CR',                   E'https://example.com/hooks\r'),
               ('LF',                   E'https://example.com/\nhooks'),
               ('tab',                  E'https://example.com/\thooks'),
               ('credentials, invalid', 'https://user:pa55@example.com/my hooks'),
               ('1025 characters',      'https://example.com/' || repeat('x', 1005))
       ) AS t(label, url),
       outcome(format('SELECT webhook.create_webhook(%L)', url)) AS o;

-- Accepted forms; the longest URL accepted has 1024 characters.
SELECT label, o.code
  FROM (VALUES ('http',                 'http://example.com'),
               ('https with path',      'https://example.com/hooks/ledger?tenant=7#x'),
               ('upper-case scheme',    'HTTPS://EXAMPLE.COM/hooks'),
               ('port',                 'https://example.com:8443/hooks'),
               ('IPv4',                 'http://192.0.2.10/hooks'),
               ('IPv6',                 'http://[2001:db8::1]:8080/hooks'),
               ('credentials',          'https://user:pa55@example.com/hooks'),
               ('percent-encoded',      'https://example.com/my%20hooks'),
               ('1024 characters',      'https://example.com/' || repeat('x', 1004))
       ) AS t(label, url),
       outcome(format('SELECT webhook.create_webhook(%L)', url)) AS o;
SELECT count(*) - :endpoints_before AS endpoints_created FROM webhook.endpoints;
SELECT max(length(url)) AS longest_url FROM webhook.endpoints;

-- A URL in an error shows its credentials masked as ******** -- the whole
-- password, '@' and all: the userinfo ends at the last '@' before the path.
-- Nothing of a password reaches the error (or the server log).
SELECT label, o.code, o.message, o.message ~ '55|123' AS shows_a_password
  FROM (VALUES ('password',             'https://user:pa55@example.com/my hooks'),
               ('@ in the password',    'https://user:p@55@example.com/my hooks'),
               ('... and no space',     'https://user:p@55@example.com/hooks'),
               ('@@ in the password',   'https://user:p@@55@example.com/my hooks'),
               (': in the password',    'https://user:p:a@55@example.com/my hooks'),
               ('token as user name',   'https://tok@123@example.com/my hooks'),
               ('empty user name',      'https://:pa55@example.com/my hooks'),
               ('one slash',            'https:/user:pa55@example.com/hooks'),
               ('no scheme',            'user:pa55@example.com/hooks'),
               ('no credentials',       'https://example.com/my hooks?to=a@b')
       ) AS t(label, url),
       outcome(format('SELECT webhook.create_webhook(%L)', url)) AS o;
DELETE FROM webhook.endpoints;
SELECT count(*) AS endpoints_before FROM webhook.endpoints \gset

--
-- secret: NULL means "generate one"; a supplied secret has 16 to 256
-- characters. The secret never appears in an error.
--
SELECT webhook.create_webhook('https://example.com/hooks', secret => 'fifteen-chars!!');
\echo :LAST_ERROR_SQLSTATE
SELECT label, o.code, o.message
  FROM (VALUES ('empty',            ''),
               ('15 characters',    repeat('s', 15)),
               ('257 characters',   repeat('s', 257)),
               ('16 characters',    repeat('s', 16)),
               ('256 characters',   repeat('s', 256)),
               ('NULL: generated',  NULL)
       ) AS t(label, secret),
       outcome(format('SELECT webhook.create_webhook(%L, secret => %L)',
                      'https://example.com/' || replace(label, ' ', '-'),
                      secret)) AS o;
SELECT substr(url, 21) AS endpoint, length(secret) AS secret_length,
       secret ~ '^whsec_[A-Za-z0-9+/]{43}=$' AS generated
  FROM webhook.endpoints
 ORDER BY id;  -- ids are time-ordered: creation order
DELETE FROM webhook.endpoints;

--
-- headers: a JSON object of string values; names are HTTP header names
-- (tokens), none of those the extension or the transport sets; no CR, LF
-- or other control character in a value.
--
SELECT webhook.create_webhook('https://example.com/hooks', headers => '["Authorization", "x"]');
\echo :LAST_ERROR_SQLSTATE
SELECT label, o.code, o.message, o.detail
  FROM (VALUES ('array',            '["X-Tenant", "acme"]'),
               ('string',           '"X-Tenant: acme"'),
               ('number',           '42'),
               ('JSON null',        'null'),
               ('number value',     '{"X-Tenant": 42}'),
               ('boolean value',    '{"X-Debug": true}'),
               ('null value',       '{"X-Tenant": null}'),
               ('object value',     '{"X-Tenant": {"id": 7}}'),
               ('array value',      '{"X-Tenant": ["a", "b"]}'),
               ('empty name',       '{"": "x"}'),
               ('space in name',    '{"X Tenant": "acme"}'),
               ('colon in name',    '{"X-Tenant:": "acme"}'),
               ('CRLF in name',     '{"X-Tenant\r\nX-Evil": "1"}'),
               ('CR in value',      '{"X-Tenant": "acme\r"}'),
               ('LF in value',      '{"X-Tenant": "acme\nX-Evil: 1"}'),
               ('CRLF in value',    '{"X-Tenant": "acme\r\nX-Evil: 1"}'),
               ('NUL-like control', '{"X-Tenant": "acme\u0001"}'),
               ('second is bad',    '{"X-Tenant": "acme", "X-Evil": "\n"}')
       ) AS t(label, headers),
       outcome(format('SELECT webhook.create_webhook(%L, headers => %L)',
                      'https://example.com/hooks', headers)) AS o;

-- Only ASCII in names. (The message, which quotes the name, is not shown:
-- psql would align it differently in another database encoding.)
SELECT code, detail
  FROM outcome('SELECT webhook.create_webhook(''https://example.com/hooks'',
                                              headers => ''{"X-Ténant": "acme"}'')');

-- The headers the extension sends itself, and hop-by-hop headers, cannot be
-- set, whatever their case.
SELECT name, o.code, o.message, o.detail
  FROM (VALUES ('Content-Type'), ('content-type'), ('CONTENT-TYPE'),
               ('User-Agent'), ('Host'), ('Content-Length'),
               ('X-Webhook-Event'), ('X-Webhook-Signature'), ('x-webhook-anything'),
               ('webhook-id'), ('Webhook-Timestamp'), ('WEBHOOK-SIGNATURE'),
               ('webhook-anything'),
               ('Connection'), ('Keep-Alive'), ('Proxy-Authorization'),
               ('TE'), ('Trailer'), ('Transfer-Encoding'), ('Upgrade'),
               ('Expect'), ('Proxy-Connection'), ('Proxy-Foo'), ('proxy-anything')
       ) AS t(name),
       outcome(format('SELECT webhook.create_webhook(%L, headers => %L)',
                      'https://example.com/hooks',
                      jsonb_build_object(name, 'x'))) AS o;

SELECT count(*) - :endpoints_before AS endpoints_created FROM webhook.endpoints;

-- Accepted: ordinary names, including ones that merely start like a
-- reserved one; a tab in a value; an empty object (stored as no headers).
SELECT headers, o.code
  FROM (VALUES ('{"Authorization": "Bearer abc", "X-Tenant": "acme"}'),
               ('{"X-Webhook": "not a prefix match", "Webhooks-Version": "2"}'),
               ('{"X-Hosted-By": "a\tb", "Accept": "*/*"}'),
               ('{"X-Proxy-Id": "7", "Proxy": "not a prefix match"}'),
               ('{"!#$%&''*+-.^_`|~09azAZ": "every token character"}'),
               ('{}')
       ) AS t(headers),
       outcome(format('SELECT webhook.create_webhook(%L, headers => %L)',
                      'https://example.com/hooks', headers)) AS o;
SELECT headers FROM webhook.endpoints ORDER BY id;
DELETE FROM webhook.endpoints;

-- Header names are case-insensitive: two names differing only in case would
-- both be sent, so they are refused, naming both. An empty or blank value
-- is refused: libcurl would not send the header but remove its own header
-- of that name. No error shows a header value (it may be a credential).
SELECT label, o.code, o.message, o.detail
  FROM (VALUES ('names differ in case',  '{"X-A": "secret-1", "x-a": "secret-2"}'),
               ('third of three',        '{"Accept": "*/*", "X-Key": "secret-1", "X-KEY": "secret-2"}'),
               ('empty value',           '{"Accept": ""}'),
               ('blank value',           '{"Accept": "  "}'),
               ('tab value',             '{"X-Tenant": "\t"}')
       ) AS t(label, headers),
       outcome(format('SELECT webhook.create_webhook(%L, headers => %L)',
                      'https://example.com/hooks', headers)) AS o;

-- At most 50 headers, and at most 65536 bytes of names and values in all
-- (room for eight values at their limit of 8192 characters).
SELECT label, o.code, o.message, o.detail,
       o.message LIKE '%secret%' OR o.detail LIKE '%secret%' AS shows_a_value
  FROM (VALUES ('50 headers',
                (SELECT jsonb_object_agg('X-H' || i, 'secret-' || i) FROM generate_series(1, 50) i)),
               ('51 headers',
                (SELECT jsonb_object_agg('X-H' || i, 'secret-' || i) FROM generate_series(1, 51) i)),
               ('500 headers of 8 kB',
                (SELECT jsonb_object_agg('X-H' || i, 'secret-' || repeat('x', 8185)) FROM generate_series(1, 500) i)),
               ('65536 bytes',   -- 8 names of 3 bytes, 8 values of 8189
                (SELECT jsonb_object_agg('X-' || chr(64 + i), 'secret-' || repeat('x', 8182))
                   FROM generate_series(1, 8) i)),
               ('65537 bytes',
                (SELECT jsonb_object_agg('X-' || chr(64 + i),
                                         'secret-' || repeat('x', 8182 + (i = 8)::int))
                   FROM generate_series(1, 8) i))
       ) AS t(label, headers),
       outcome(format('SELECT webhook.create_webhook(%L, headers => %L)',
                      'https://example.com/hooks', headers)) AS o;
SELECT count(*) AS endpoints_created,
       min((SELECT count(*) FROM jsonb_object_keys(headers))) AS fewest_headers
  FROM webhook.endpoints;
DELETE FROM webhook.endpoints;

--
-- event_types: every entry names a catalog entry or is a 'prefix.*'
-- pattern. An unknown name is an error that lists the catalog.
--
SELECT webhook.create_webhook('https://example.com/hooks',
                              ARRAY['journal_entry.posted', 'journal_entry.voided']);
\echo :LAST_ERROR_SQLSTATE
SELECT label, o.code, o.message, o.detail
  FROM (VALUES ('unknown name',     '{invoice.paid}'),
               ('upper case',       '{Journal_Entry.Posted}'),
               ('one word',         '{journal_entry}'),
               ('bare *',           '{*}'),
               ('suffix pattern',   '{*.posted}'),
               ('no dot before *',  '{journal_entry*}'),
               ('* in the middle',  '{journal_entry.*.x}'),
               ('double *',         '{journal_entry.**}'),
               ('.*',               '{.*}'),
               ('upper-case prefix','{Journal_Entry.*}'),
               ('empty entry',      '{""}'),
               ('NULL entry',       '{NULL}'),
               ('one bad of two',   '{journal_entry.posted,period.opened}')
       ) AS t(label, filter),
       outcome(format('SELECT webhook.create_webhook(%L, %L::text[])',
                      'https://example.com/hooks', filter)) AS o;
SELECT count(*) - :endpoints_before AS endpoints_created FROM webhook.endpoints;

-- Accepted: catalog names and 'prefix.*' patterns that match an event type
-- of the catalog ('invoice.*' and 'a.b.*' match none: refused, see
-- first_hour). The filter is stored sorted and without duplicates; NULL
-- and '{}' both mean every event.
SELECT filter, o.code
  FROM (VALUES ('{journal_entry.posted}'),
               ('{period.closed,journal_entry.posted,period.closed}'),
               ('{journal_entry.*}'),
               ('{invoice.*}'),
               ('{a.b.*}'),
               ('{}'),
               (NULL)
       ) AS t(filter),
       outcome(format('SELECT webhook.create_webhook(%L, %L::text[])',
                      'https://example.com/hooks', filter)) AS o;
SELECT event_types FROM webhook.endpoints ORDER BY id;
DELETE FROM webhook.endpoints;

--
-- enabled must not be NULL at creation.
--
SELECT webhook.create_webhook('https://example.com/hooks', enabled => NULL);
\echo :LAST_ERROR_SQLSTATE

--
-- update_webhook applies the same rules, and a failed update changes
-- nothing.
--
SELECT id AS endpoint_id
  FROM webhook.create_webhook('https://example.com/hooks', '{journal_entry.posted}',
                              description => 'ledger sink',
                              headers => '{"X-Tenant": "acme"}') \gset
SELECT url, event_types, description, headers, enabled, updated_at
  FROM webhook.endpoints WHERE id = :'endpoint_id' \gset before_
SELECT label, o.code, o.message
  FROM (VALUES ('url',          format('url => %L', 'ftp://example.com/')),
               ('long url',     format('url => %L', 'https://example.com/' || repeat('x', 1005))),
               ('event type',   format('event_types => %L', '{invoice.paid}')),
               ('pattern',      format('event_types => %L', '{*}')),
               ('headers',      format('headers => %L', '{"Host": "example.org"}')),
               ('header value', format('headers => %L', '{"X-Tenant": "a\nb"}')),
               ('header case',  format('headers => %L', '{"X-Tenant": "a", "x-tenant": "b"}')),
               ('empty value',  format('headers => %L', '{"X-Tenant": ""}')),
               ('51 headers',   format('headers => %L',
                                       (SELECT jsonb_object_agg('X-H' || i, 'v') FROM generate_series(1, 51) i))),
               ('valid and invalid together',
                format('url => %L, description => %L, headers => %L',
                       'https://example.org/', 'changed', '[]'))
       ) AS t(label, arguments),
       outcome(format('SELECT webhook.update_webhook(%L, %s)', :'endpoint_id', arguments)) AS o;
SELECT url = :'before_url' AS same_url,
       event_types = :'before_event_types' AS same_event_types,
       description = :'before_description' AS same_description,
       headers = :'before_headers' AS same_headers,
       updated_at = :'before_updated_at' AS not_updated
  FROM webhook.endpoints WHERE id = :'endpoint_id';
DELETE FROM webhook.endpoints;
