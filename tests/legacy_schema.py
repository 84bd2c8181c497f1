"""The schema as tenhub kept it before Alembic: numbered SQL scripts and PRAGMA user_version.

Kept verbatim from the last release that used them, so the tests can make the files such
a tenhub wrote and check that this one upgrades them in place.
"""

from __future__ import annotations

import sqlite3

LEGACY_MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "alarms, timeline, panel events, outbox",
        """
        -- Every event a panel sent that was stored: the key of deduplication.
        CREATE TABLE panel_events (
            panel_id    TEXT NOT NULL,
            seq         INTEGER NOT NULL,
            type        TEXT NOT NULL,
            payload     TEXT NOT NULL,          -- canonical JSON, to tell a repeat from a reuse
            alarm_id    TEXT,
            status      TEXT NOT NULL,          -- the receipt it got: accepted | rejected
            error       TEXT,
            received_at INTEGER NOT NULL,
            PRIMARY KEY (panel_id, seq)
        ) WITHOUT ROWID;

        CREATE TABLE alarms (
            id           TEXT PRIMARY KEY,
            unit_id      TEXT NOT NULL,
            household_id TEXT NOT NULL,
            panel_id     TEXT NOT NULL,
            kind         TEXT NOT NULL,
            state        TEXT NOT NULL,
            raised_at    INTEGER NOT NULL,      -- hub time, ms
            panel_ts     INTEGER NOT NULL,      -- the panel's own clock, ms
            seq          INTEGER NOT NULL,
            updated_at   INTEGER NOT NULL
        );
        CREATE INDEX alarms_by_unit ON alarms (unit_id, raised_at);
        CREATE INDEX alarms_open ON alarms (state) WHERE state NOT IN ('resolved', 'cancelled');

        -- Append-only story of each alarm: rows are added, never changed.
        CREATE TABLE alarm_timeline (
            id       INTEGER PRIMARY KEY AUTOINCREMENT,
            alarm_id TEXT NOT NULL REFERENCES alarms (id),
            at       INTEGER NOT NULL,
            entry    TEXT NOT NULL,             -- raised, acknowledged, cancelled, ...
            state    TEXT NOT NULL,             -- the alarm's state after this entry
            actor    TEXT,                      -- who: panel:p-1, household:u-1/h-2, user:...
            channel  TEXT,                      -- through what: panel, sms, voice, push, web
            detail   TEXT                       -- JSON
        );
        CREATE INDEX alarm_timeline_by_alarm ON alarm_timeline (alarm_id, id);
        CREATE TRIGGER alarm_timeline_no_update BEFORE UPDATE ON alarm_timeline
        BEGIN SELECT RAISE(ABORT, 'alarm timeline is append-only'); END;
        CREATE TRIGGER alarm_timeline_no_delete BEFORE DELETE ON alarm_timeline
        BEGIN SELECT RAISE(ABORT, 'alarm timeline is append-only'); END;

        -- Notifications, written in the transaction of the change that caused them.
        CREATE TABLE outbox (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            alarm_id        TEXT REFERENCES alarms (id),
            channel         TEXT NOT NULL,      -- panel, sms, voice, push
            recipient       TEXT NOT NULL,      -- unit id, phone, subscription id
            payload         TEXT NOT NULL,
            idempotency_key TEXT NOT NULL UNIQUE,
            status          TEXT NOT NULL,      -- queued, sending, sent, failed, unknown
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER NOT NULL,
            created_at      INTEGER NOT NULL,
            sent_at         INTEGER,
            last_error      TEXT
        );
        CREATE INDEX outbox_due ON outbox (status, next_attempt_at) WHERE status = 'queued';
        CREATE INDEX outbox_by_recipient ON outbox (channel, recipient, id);
        CREATE INDEX outbox_by_alarm ON outbox (alarm_id);
        """,
    ),
    (
        2,
        "escalation ladders in the database",
        """
        -- The ladder an alarm follows, copied at raise time: a policy edited later does not
        -- change the steps of an alarm already running.
        ALTER TABLE alarms ADD COLUMN policy TEXT;
        ALTER TABLE alarms ADD COLUMN ladder TEXT;
        ALTER TABLE alarms ADD COLUMN next_step INTEGER;      -- index of the next step
        ALTER TABLE alarms ADD COLUMN next_step_at INTEGER;   -- when it falls due; NULL: none
        ALTER TABLE alarms ADD COLUMN duress INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX alarms_due ON alarms (next_step_at) WHERE next_step_at IS NOT NULL;

        -- One row per step and alarm, ever: the primary key makes "never twice" a constraint.
        CREATE TABLE alarm_steps (
            alarm_id TEXT NOT NULL REFERENCES alarms (id),
            step     INTEGER NOT NULL,
            outcome  TEXT NOT NULL,                -- fired | skipped
            due_at   INTEGER NOT NULL,
            at       INTEGER NOT NULL,
            reason   TEXT,
            PRIMARY KEY (alarm_id, step)
        ) WITHOUT ROWID;
        """,
    ),
    (
        3,
        "delivery over SMS, voice and push; reply codes; acknowledge links",
        """
        -- What the provider said: its id (a Twilio SID) and the latest delivery status.
        ALTER TABLE outbox ADD COLUMN provider_id TEXT;
        ALTER TABLE outbox ADD COLUMN delivery TEXT;
        ALTER TABLE outbox ADD COLUMN delivery_at INTEGER;
        -- Set when a rate limit first held the message back (shown on the timeline once).
        ALTER TABLE outbox ADD COLUMN limited_at INTEGER;
        CREATE INDEX outbox_by_provider ON outbox (provider_id) WHERE provider_id IS NOT NULL;
        CREATE INDEX outbox_sends ON outbox (channel, recipient, sent_at)
            WHERE sent_at IS NOT NULL;

        -- "Reply 3 to acknowledge": a small number per phone, unique among its open alarms.
        CREATE TABLE reply_codes (
            phone      TEXT NOT NULL,
            alarm_id   TEXT NOT NULL REFERENCES alarms (id),
            code       INTEGER NOT NULL,
            role       TEXT NOT NULL,
            name       TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (phone, alarm_id)
        ) WITHOUT ROWID;
        CREATE INDEX reply_codes_by_code ON reply_codes (phone, code);

        -- The acknowledge link of a push notification: one unguessable token per recipient.
        CREATE TABLE ack_tokens (
            token      TEXT PRIMARY KEY,
            alarm_id   TEXT NOT NULL REFERENCES alarms (id),
            phone      TEXT NOT NULL,
            role       TEXT NOT NULL,
            name       TEXT NOT NULL,
            created_at INTEGER NOT NULL
        ) WITHOUT ROWID;

        -- Browsers subscribed to Web Push, each for the responder with this phone.
        CREATE TABLE push_subscriptions (
            id         TEXT PRIMARY KEY,
            phone      TEXT NOT NULL,
            endpoint   TEXT NOT NULL UNIQUE,
            p256dh     TEXT NOT NULL,
            auth       TEXT NOT NULL,
            created_at INTEGER NOT NULL
        );
        CREATE INDEX push_subscriptions_by_phone ON push_subscriptions (phone);
        """,
    ),
    (
        4,
        "accounts: users, sessions, API tokens",
        """
        CREATE TABLE users (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
            password_hash TEXT NOT NULL,
            role          TEXT NOT NULL CHECK (role IN ('admin', 'police', 'patrol')),
            zones         TEXT NOT NULL DEFAULT '[]',   -- JSON list; admin sees every zone
            phone         TEXT,                          -- links the user to pushes and SMS
            disabled      INTEGER NOT NULL DEFAULT 0,
            created_at    INTEGER NOT NULL
        );

        -- Only hashes of session and API tokens are kept: a stolen database opens nothing.
        CREATE TABLE sessions (
            token_hash  TEXT PRIMARY KEY,
            user_id     INTEGER NOT NULL REFERENCES users (id),
            csrf_token  TEXT NOT NULL,
            created_at  INTEGER NOT NULL,
            expires_at  INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX sessions_by_user ON sessions (user_id);

        CREATE TABLE api_tokens (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id      INTEGER NOT NULL REFERENCES users (id),
            name         TEXT NOT NULL,
            token_hash   TEXT NOT NULL UNIQUE,
            created_at   INTEGER NOT NULL,
            last_used_at INTEGER
        );
        """,
    ),
    (
        5,
        "panel supervision, troubles, panel credentials",
        """
        -- The last word of each panel, written in batches (never once per heartbeat).
        CREATE TABLE panel_state (
            panel_id   TEXT PRIMARY KEY,
            state      TEXT NOT NULL,              -- online | offline | unknown
            last_seen  INTEGER,
            battery    INTEGER,
            fw         TEXT,
            updated_at INTEGER NOT NULL
        ) WITHOUT ROWID;

        -- Conditions that need someone's attention: a panel offline, tampered, on battery.
        CREATE TABLE troubles (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            panel_id    TEXT NOT NULL,
            kind        TEXT NOT NULL,             -- offline, tamper, low_battery, power_loss…
            opened_at   INTEGER NOT NULL,
            closed_at   INTEGER,
            detail      TEXT
        );
        CREATE INDEX troubles_open ON troubles (panel_id, kind) WHERE closed_at IS NULL;
        -- At most one open trouble of a kind per panel: a flapping panel is one trouble.
        CREATE UNIQUE INDEX troubles_one_open ON troubles (panel_id, kind)
            WHERE closed_at IS NULL;

        -- What a provisioned panel logs in with, and the key it signs its events with.
        CREATE TABLE panel_credentials (
            panel_id       TEXT PRIMARY KEY,
            password_hash  TEXT NOT NULL,          -- Mosquitto's password-file format
            hmac_key       TEXT NOT NULL,          -- base64; events are signed with it
            require_signed INTEGER NOT NULL DEFAULT 1,
            provisioned_at INTEGER NOT NULL
        ) WITHOUT ROWID;

        -- Troubles notify like alarms do; their outbox rows have no alarm.
        CREATE INDEX outbox_no_alarm ON outbox (channel, status) WHERE alarm_id IS NULL;
        """,
    ),
    (
        6,
        "the sender finds a recipient's queued messages without reading its history",
        """
        -- due() asks, per queued message, whether an older one of the same recipient is
        -- still queued; without this it read every message the recipient ever had.
        CREATE INDEX outbox_queued_by_recipient ON outbox (channel, recipient, id)
            WHERE status = 'queued';
        """,
    ),
    (
        7,
        "a new reply code reads the phone's open alarms' codes, not every code it ever had",
        """
        -- A new code is the lowest none of the phone's open alarms uses. Found by joining
        -- every code the phone was ever given to its alarm, it read months of them in the
        -- field, inside the writer's transaction of each escalation step.
        ALTER TABLE reply_codes ADD COLUMN alarm_open INTEGER NOT NULL DEFAULT 1;
        UPDATE reply_codes SET alarm_open = 0 WHERE alarm_id IN
            (SELECT id FROM alarms WHERE state IN ('resolved', 'cancelled'));
        CREATE INDEX reply_codes_by_alarm ON reply_codes (alarm_id);
        CREATE INDEX reply_codes_open ON reply_codes (phone, code) WHERE alarm_open = 1;
        -- However an alarm ends, its codes are free again.
        CREATE TRIGGER reply_codes_freed AFTER UPDATE OF state ON alarms
            WHEN NEW.state IN ('resolved', 'cancelled')
        BEGIN
            UPDATE reply_codes SET alarm_open = 0 WHERE alarm_id = NEW.id AND alarm_open = 1;
        END;

        -- Every query by recipient asks for queued messages (outbox_queued_by_recipient)
        -- or sends (outbox_sends): this index was only written, once per message queued.
        DROP INDEX outbox_by_recipient;
        """,
    ),
    (
        8,
        "a new reply code is found in the index alone, however many alarms a phone has open",
        """
        -- In a storm a zone's patrol phones have hundreds of open alarms, and each new one
        -- asked for their codes: the index held (phone, code) only, so SQLite read each
        -- code's row to check alarm_open, and the hub gathered every code to find a gap.
        -- With alarm_open in the index the count, the highest and the first gap are read
        -- from the index alone.
        DROP INDEX reply_codes_open;
        CREATE INDEX reply_codes_open ON reply_codes (phone, code, alarm_open)
            WHERE alarm_open = 1;
        """,
    ),
    (
        9,
        "failed logins per client address and per account from it, kept across restarts",
        """
        -- Kept in memory, a restart handed a password guesser fresh attempts. One row per
        -- address (account = '') and per account tried from it (a hash of the name: people
        -- type passwords into the name field too); the wait each earns is worked out from
        -- the count and the time of the last failure.
        CREATE TABLE login_failures (
            address        TEXT NOT NULL,            -- client address (IPv6: its /64)
            account        TEXT NOT NULL,
            failures       INTEGER NOT NULL,
            last_failed_at INTEGER NOT NULL,
            PRIMARY KEY (address, account)
        ) WITHOUT ROWID;
        -- Stale rows are swept oldest first.
        CREATE INDEX login_failures_by_age ON login_failures (last_failed_at);
        """,
    ),
    (
        10,
        "a panel that lost its counter: its earlier events kept aside",
        """
        -- A panel replaced or reset starts again at seq 1. Its new event takes the
        -- (panel, seq) key that deduplicates; the event stored there before is kept here.
        CREATE TABLE panel_events_superseded (
            panel_id      TEXT NOT NULL,
            seq           INTEGER NOT NULL,
            type          TEXT NOT NULL,
            payload       TEXT NOT NULL,
            alarm_id      TEXT,
            status        TEXT NOT NULL,
            error         TEXT,
            received_at   INTEGER NOT NULL,
            superseded_at INTEGER NOT NULL
        );
        CREATE INDEX panel_events_superseded_by_panel ON panel_events_superseded (panel_id, seq);
        """,
    ),
    (
        11,
        "sends whose outcome is unknown are found without reading the whole outbox",
        """
        -- The reconciler asks the provider about each unknown send, every few seconds.
        CREATE INDEX outbox_in_doubt ON outbox (channel, next_attempt_at)
            WHERE status = 'unknown';
        """,
    ),
    (
        12,
        "PINs typed on panels are no longer kept in the stored events",
        """
        -- Cancels are now stored with a keyed digest in place of the PIN. The PINs of the
        -- cancels stored before cannot be turned into digests here (the key is not in the
        -- database): they are removed. A late repeat of one of those old cancels is then
        -- refused as a reused seq rather than answered as a duplicate; its alarm is long over.
        UPDATE panel_events SET payload = json_set(payload, '$.pin', 'removed')
            WHERE type = 'cancel' AND json_extract(payload, '$.pin') IS NOT NULL;
        UPDATE panel_events_superseded SET payload = json_set(payload, '$.pin', 'removed')
            WHERE type = 'cancel' AND json_extract(payload, '$.pin') IS NOT NULL;
        """,
    ),
]


def make_legacy_file(path, up_to: int = LEGACY_MIGRATIONS[-1][0]) -> None:
    """A SQLite file at schema version `up_to`, as the old tenhub left it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        for version, _title, sql in LEGACY_MIGRATIONS:
            if version > up_to:
                break
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;"
            )
    finally:
        conn.close()
