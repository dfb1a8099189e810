--
-- Signatures: webhook.sign and webhook.sign_hex compute what the worker puts
-- in the webhook-signature and X-Webhook-Signature headers, so that
-- receivers can check their verification code against the database.
--
\set SHOW_CONTEXT never

--
-- webhook-signature (Standard Webhooks): "v1," and the base64 HMAC-SHA256
-- of "<webhook-id>.<webhook-timestamp>.<body>". A "whsec_" secret is keyed
-- by the base64-decoded bytes after the prefix.
--
-- The test vector of the Standard Webhooks specification:
SELECT webhook.sign('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
                    'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330,
                    '{"test": 2432232314}') AS signature;
SELECT webhook.sign('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
                    'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330,
                    '{"test": 2432232314}')
       = 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=' AS matches_spec;
-- Any change of id, timestamp or body changes the signature.
SELECT webhook.sign('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
                    'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265331,
                    '{"test": 2432232314}') AS later_timestamp,
       webhook.sign('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
                    'msg_p5jXN8AQM9LWM0D4loKWxJeK', 1614265330,
                    '{"test": 2432232314}') AS other_id,
       webhook.sign('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
                    'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330,
                    '{"test":2432232314}') AS other_body;

-- Any other secret is keyed by its bytes as stored (the expected values
-- here were computed with "openssl dgst -sha256 -hmac <secret> -binary").
SELECT webhook.sign('plain-secret-of-16+chars', 'msg_1', 1700000000, '{"a":1}')
       = 'v1,HSMe40MFlnBEsp3Moq1K0bRsG7ZAHg4yNe5JhBDgW8E=' AS plain_secret,
       webhook.sign('plain-secret-of-16+chars', 'msg_1', 1700000000, '')
       = 'v1,KgtechSYgXHO8Dqyf7Dv9DjfkXuTF5FrAZsH/hWTWSQ=' AS empty_body,
       -- "whsec_" followed by something that is not base64: the bytes as stored
       webhook.sign('whsec_not base64!', 'msg_1', 1700000000, '{"a":1}')
       = 'v1,2CzmslYk6A2H5OVX3bkzw52DknoC6+KD2Xr0PhR9Cug=' AS whsec_not_base64;

--
-- X-Webhook-Signature: "sha256=" and the lowercase hex HMAC-SHA256 of the
-- raw body, keyed by the secret's bytes exactly as stored, "whsec_"
-- secrets included.
--
SELECT webhook.sign_hex('a-secret-of-at-least-16-chars',
                        '{"id":"evt_1","type":"journal_entry.posted"}') AS signature;
SELECT webhook.sign_hex('a-secret-of-at-least-16-chars',
                        '{"id":"evt_1","type":"journal_entry.posted"}')
       = 'sha256=78e62bc892ddbefabd934eeac9d26db35a38fa9ac8dcfd3b65e8a341a102cc5f' AS matches_openssl,
       webhook.sign_hex('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', '{"test": 2432232314}')
       = 'sha256=80ec8a89ce3cd22133a1066caecb4d04fea7467657c8514d717ec42c38a5c94c' AS whsec_as_stored,
       -- the body's bytes: UTF-8 here
       webhook.sign_hex('a-secret-of-at-least-16-chars', '{"memo":"café"}')
       = 'sha256=8eebdb6f21f2e591792a7cdda9a5ff47f01aae5d1d5d51e1b71e6c6781df8669' AS utf8_body;

--
-- The same, checked against pgcrypto's hmac() over many generated secrets
-- and bodies.
--
CREATE EXTENSION pgcrypto;
WITH cases AS (
    SELECT n,
           webhook.generate_secret() AS whsec_secret,
           md5(n::text) || md5((n * 7)::text) AS plain_secret,
           'msg_' || n AS id,
           1700000000 + n AS ts,
           jsonb_build_object('n', n, 'memo', repeat('ü', n % 50))::text AS body
      FROM generate_series(1, 200) AS n
)
SELECT count(*) AS cases,
       bool_and(webhook.sign(whsec_secret, id, ts, body)
                = 'v1,' || encode(hmac(convert_to(id || '.' || ts || '.' || body, 'UTF8'),
                                       decode(substr(whsec_secret, 7), 'base64'),
                                       'sha256'), 'base64')) AS sign_whsec,
       bool_and(webhook.sign(plain_secret, id, ts, body)
                = 'v1,' || encode(hmac(id || '.' || ts || '.' || body, plain_secret,
                                       'sha256'), 'base64')) AS sign_plain,
       bool_and(webhook.sign_hex(whsec_secret, body)
                = 'sha256=' || encode(hmac(body, whsec_secret, 'sha256'), 'hex')) AS sign_hex_whsec,
       bool_and(webhook.sign_hex(plain_secret, body)
                = 'sha256=' || encode(hmac(body, plain_secret, 'sha256'), 'hex')) AS sign_hex_plain
  FROM cases;
DROP EXTENSION pgcrypto;

-- NULL in, NULL out (the functions are STRICT).
SELECT webhook.sign(NULL, 'msg_1', 1, '{}') IS NULL AS sign_null,
       webhook.sign_hex('a-secret-of-at-least-16-chars', NULL) IS NULL AS sign_hex_null;
