--
-- The event catalog: the event types that can be emitted and subscribed to.
--
\set SHOW_CONTEXT never

-- Shipped with the extension:
SELECT name, description FROM webhook.event_types ORDER BY name;

-- Registering a new event type; the description is optional.
SELECT webhook.register_event_type('invoice.paid', 'An invoice was paid in full');
SELECT webhook.register_event_type('invoice.payment.refunded');
SELECT webhook.register_event_type('fx_rate_2024.updated', 'Digits and underscores are fine');
SELECT name, description FROM webhook.event_types
 WHERE name IN ('invoice.paid', 'invoice.payment.refunded', 'fx_rate_2024.updated')
 ORDER BY name;

-- Registering a name twice is an error, for shipped names too.
SELECT webhook.register_event_type('invoice.paid', 'again');
SELECT webhook.register_event_type('journal_entry.posted');
\echo :LAST_ERROR_SQLSTATE
-- The first registration's description stays.
SELECT description FROM webhook.event_types WHERE name = 'invoice.paid';

-- Names are dot-separated lowercase words: [a-z0-9_]+(\.[a-z0-9_]+)+
SELECT webhook.register_event_type('Invoice.Paid');
SELECT CASE WHEN length(name) > 20 THEN length(name) || ' characters'
            ELSE name END AS name,
       o.code, o.message, o.detail
  FROM (VALUES ('invoice'), ('invoice.'), ('.invoice'), ('invoice..paid'),
               ('invoice.paid.'), ('invoice.*'), ('invoice paid.x'),
               ('invoice-paid.x'), (''),
               (repeat('a', 253) || '.bc'), (repeat('a', 252) || '.bc')) AS t(name),
       outcome(format('SELECT webhook.register_event_type(%L)', name)) AS o
 ORDER BY o.code, name COLLATE "C";
-- (a name of 255 characters is the longest accepted)
-- Only ASCII lowercase letters. (The message, which quotes the name, is not
-- shown: psql would align it differently in another database encoding.)
SELECT code, detail FROM outcome('SELECT webhook.register_event_type(''facture.payée'')');

-- A name is required.
SELECT webhook.register_event_type(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.register_event_type(NULL, 'no name');

-- None of the failures above changed the catalog.
SELECT count(*) AS event_types FROM webhook.event_types;

-- The table checks names too, for rows inserted by hand.
INSERT INTO webhook.event_types (name) VALUES ('Not A Name');
\echo :LAST_ERROR_SQLSTATE

-- The catalog is a plain table: list it, join it, describe it.
SELECT name, coalesce(description, '(none)') AS description
  FROM webhook.event_types
 WHERE name LIKE 'invoice.%'
 ORDER BY name;

-- There is no function to remove an event type; the extension's owner may
-- delete rows. (The rest of the suite expects the shipped catalog.)
DELETE FROM webhook.event_types
 WHERE name IN ('invoice.paid', 'invoice.payment.refunded', 'fx_rate_2024.updated',
                repeat('a', 252) || '.bc');
SELECT count(*) AS event_types FROM webhook.event_types;
