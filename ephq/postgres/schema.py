"""The schema: created on first use, versioned so that a later release can migrate it.

Every table lives in the schema `ephq`. A message is one row of `ephq.messages`, whose state is
read from its columns, never stored as a word that could disagree with them:

    dead        false: the stream's message; true: one of its dead letters
    visible_at  nanoseconds since the epoch: leased or delayed until then, visible after
    token       the current delivery's token while leased (also after the lease expired, until
                it is leased again: that receipt stays good, as in the file backend)

    ready     visible_at <= now                delayed   visible_at > now, token is null
    inflight  visible_at > now, token set

The claim is the function `ephq.claim`: `SELECT … ORDER BY id … FOR UPDATE SKIP LOCKED LIMIT n`
collects the rows, one UPDATE leases them (another dead-letters those out of attempts); ack is
a DELETE, so the hot table holds only what is queued. Other tables: `streams` (settings),
`holders` (who holds leases), `dedup_keys`, `quarantine` (rows that are not messages, set
aside). Autovacuum is made eager for it, because
every lease updates a row (and leaves a dead tuple behind).
"""

from __future__ import annotations

from typing import Any

from ..ids import STREAM_NAME
from ..message import MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES

VERSION = 5

# What a stream's settings must be: what `ephq config` takes.
SETTINGS_IN_BOUNDS = (
    f"max_size BETWEEN {MIN_MAX_MESSAGE_BYTES} AND {MAX_MESSAGE_BYTES} AND dedup_window_ms > 0"
    f" AND (dead_letter_stream IS NULL OR dead_letter_stream ~ '^{STREAM_NAME}$')"
)

# Each entry brings the schema from the version before it to its index + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE ephq.streams (
            name text PRIMARY KEY,
            max_attempts integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
            visibility_ms bigint NOT NULL DEFAULT 30000 CHECK (visibility_ms > 0),
            max_size integer NOT NULL DEFAULT 1048576,
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE ephq.messages (
            stream text NOT NULL,
            dead boolean NOT NULL,
            id text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            visible_at bigint NOT NULL,
            token text,
            data text NOT NULL,
            meta jsonb NOT NULL DEFAULT '{}',
            PRIMARY KEY (stream, dead, id)
        ) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0,
                autovacuum_analyze_scale_factor = 0.02, fillfactor = 90)""",
        # No index on visible_at or token: a lease then changes no indexed column, so it is a
        # HOT update (if its page has room: see version 3's fillfactor) that adds no index
        # entries, which is most of what a claim costs. What looks for due times (a waiting
        # consumer, once a second; `leases`; the next retry) walks the stream's rows instead.
        # The claim, as a function: the row to take is chosen by walking the primary key in
        # id order, and each one taken is updated by its whole key. As one SQL statement the
        # planner, before the table has statistics, joined the picked rows to every row of
        # the stream (50-77 ms for a claim of 100 at 1,000 deep); a loop has no join to get
        # wrong.
        """CREATE FUNCTION ephq.claim(p_stream text, p_dead boolean, p_now bigint,
                p_count integer, p_token text, p_visibility bigint, p_died_at text)
            RETURNS TABLE (buried integer, id text, attempts integer, visible_at bigint,
                           token text, data text, meta jsonb)
            LANGUAGE plpgsql AS $$
            #variable_conflict use_column
            DECLARE
                v_max integer;
                v_visibility bigint;
                picked record;
                n_buried integer := 0;
            BEGIN
                SELECT COALESCE(max(s.max_attempts), 5), COALESCE(max(s.visibility_ms), 30000)
                    INTO v_max, v_visibility FROM ephq.streams s WHERE s.name = p_stream;
                FOR picked IN
                    SELECT m.id, m.attempts, m.token FROM ephq.messages m
                    WHERE m.stream = p_stream AND m.dead = p_dead AND m.visible_at <= p_now
                    ORDER BY m.id LIMIT p_count
                    FOR UPDATE SKIP LOCKED
                LOOP
                    IF NOT p_dead AND picked.attempts >= v_max THEN
                        UPDATE ephq.messages m SET dead = true, token = NULL,
                            visible_at = p_now,
                            meta = m.meta || jsonb_build_object('dead', jsonb_build_object(
                                'stream', p_stream,
                                'error', CASE WHEN picked.token IS NOT NULL THEN 'lease expired'
                                         ELSE 'delivered ' || picked.attempts
                                              || ' times; max_attempts is ' || v_max END,
                                'attempts', picked.attempts,
                                'died_at', p_died_at))
                        WHERE m.stream = p_stream AND m.dead = false AND m.id = picked.id;
                        n_buried := n_buried + 1;
                    ELSE
                        RETURN QUERY
                        UPDATE ephq.messages m SET attempts = m.attempts + 1, token = p_token,
                            visible_at = p_now + COALESCE(p_visibility, v_visibility * 1000000)
                        WHERE m.stream = p_stream AND m.dead = p_dead AND m.id = picked.id
                        RETURNING 0, m.id, m.attempts, m.visible_at, m.token, m.data, m.meta;
                    END IF;
                END LOOP;
                IF n_buried > 0 THEN
                    RETURN QUERY SELECT n_buried, NULL::text, NULL::integer, NULL::bigint,
                        NULL::text, NULL::text, NULL::jsonb;
                END IF;
            END
            $$""",
        """CREATE TABLE ephq.holders (
            id bigserial PRIMARY KEY,
            stream text NOT NULL,
            dead boolean NOT NULL,
            backend_pid integer NOT NULL,
            host text NOT NULL,
            pid integer NOT NULL,
            worker text NOT NULL,
            started_at bigint NOT NULL,
            leases jsonb NOT NULL DEFAULT '{}'
        )""",
    ),
    # 2: deduplication keys, dead-letter streams, message groups, and a claim by arrays.
    #
    # Deduplication: a key is one row, taken by INSERT … ON CONFLICT in the transaction that
    # inserts its message, so a key is never without its message nor a message stored twice;
    # rows older than the stream's window are deleted now and then (by `at`).
    #
    # Dead-letter streams: every way a message dies sets dead = true (the claim, stats' sweep,
    # nack, reject); a trigger on just that change sends it on when its stream names a
    # dead-letter stream: an ordinary message there, from its first attempt. A message of a
    # dead-letter stream that dies keeps the stream it first died in (dlq_error says why).
    #
    # Groups: only a group's head is a row of messages (grp set); the others wait in
    # ephq.waiting, which the claim never walks, and ephq.groups names each group's head. A
    # head that leaves (deleted: acked or purged; or dead-lettered) is replaced by the group's
    # oldest waiting message, in the same transaction, by the triggers.
    #
    # The claim returns each message's group: version 3 makes it anew, and makes the
    # functions that release a group and forward a dead letter (they ring as version 3 does).
    (
        "ALTER TABLE ephq.streams ADD COLUMN dedup_window_ms bigint NOT NULL DEFAULT 300000",
        """CREATE TABLE ephq.dedup_keys (
            stream text NOT NULL,
            key text NOT NULL,
            id text NOT NULL,
            at bigint NOT NULL,
            PRIMARY KEY (stream, key)
        )""",
        "CREATE INDEX dedup_keys_by_age ON ephq.dedup_keys (stream, at)",
        "ALTER TABLE ephq.streams ADD COLUMN dead_letter_stream text",
        "ALTER TABLE ephq.messages ADD COLUMN grp text",
        """CREATE TABLE ephq.waiting (
            stream text NOT NULL,
            grp text NOT NULL,
            id text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            visible_at bigint NOT NULL,
            data text NOT NULL,
            meta jsonb NOT NULL DEFAULT '{}',
            PRIMARY KEY (stream, grp, id)
        )""",
        """CREATE TABLE ephq.groups (
            stream text NOT NULL,
            grp text NOT NULL,
            head text NOT NULL,
            PRIMARY KEY (stream, grp)
        )""",
        """CREATE FUNCTION ephq.join_group(p_stream text, p_grp text, p_id text,
                p_attempts integer, p_visible bigint, p_data text, p_meta jsonb)
            RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN
                -- The group's first: its head. Another transaction making the same group waits
                -- here for this one, then finds it made.
                INSERT INTO ephq.groups (stream, grp, head) VALUES (p_stream, p_grp, p_id)
                    ON CONFLICT DO NOTHING;
                IF FOUND THEN
                    INSERT INTO ephq.messages (stream, dead, id, attempts, visible_at, data,
                                               meta, grp)
                        VALUES (p_stream, false, p_id, p_attempts, p_visible, p_data, p_meta,
                                p_grp);
                    RETURN true;
                END IF;
                INSERT INTO ephq.waiting (stream, grp, id, attempts, visible_at, data, meta)
                    VALUES (p_stream, p_grp, p_id, p_attempts, p_visible, p_data, p_meta);
                RETURN false;
            END
            $$""",
        """CREATE FUNCTION ephq.head_left() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM ephq.release_group(OLD.stream, OLD.grp, OLD.id);
                RETURN NULL;
            END
            $$""",
        """CREATE TRIGGER head_left AFTER DELETE ON ephq.messages
            FOR EACH ROW WHEN (OLD.grp IS NOT NULL AND NOT OLD.dead)
            EXECUTE FUNCTION ephq.head_left()""",
        "DROP FUNCTION ephq.claim(text, boolean, bigint, integer, text, bigint, text)",
    ),
    # 3: the claim as it is now (versions 1 and 2 made earlier forms; a store migrating from
    # either gets this one in the same transaction).
    #
    # It takes what it picked with one UPDATE per kind (lease, or dead-letter when its attempts
    # are spent), not one UPDATE per row (a batch of 100 cost 28 µs a row on the server), and
    # finds those rows by ctid: it holds them locked, so their ctid cannot change under it, and
    # a TID lookup costs less than a descent of the three-column key per row (a batch of 100
    # dequeued and acked: 0.83x of the time by key). It returns NULL for the usual empty
    # metadata, which the driver would otherwise parse as JSON for every message (1.6 µs a
    # row of the client's time).
    #
    # Pages are filled to half (they were to 90%): a lease writes a new version of its row,
    # which is a HOT update only if it fits on the same page. Claiming a backlog takes every
    # row of a page before acks free any room, so at 90% fewer than a quarter of 4,000 leases
    # were HOT (each of the others inserted into the three-column key: a fifth of the
    # server's time in a batch claim); at half, 95%. A batch of 100 dequeued and acked took
    # 0.81x of the time at 90% (0.83x without synchronous commit; interleaved A/B). The table
    # holds only what is queued, so twice its pages is a small price.
    #
    # Its statements use generic plans: PL/pgSQL's plan cache otherwise planned the pick
    # afresh on every call (a LIMIT given as a parameter makes a generic plan look dearer),
    # a quarter of the server's time for a single dequeue+ack (perf, 5,000 in a row). The
    # generic plans are the ones wanted whatever the parameters, with statistics or without
    # (checked with auto_explain on 200,000 rows never analyzed): the key's index in id order,
    # filtered on visible_at, under LIMIT; and a TID scan. ANALYZE still replans them.
    (
        # Each stream rings a channel of its own, so an enqueue wakes only the consumers
        # waiting on its stream; with one channel for all (versions 1 and 2) it woke every
        # waiting consumer of every stream. The channel is ephq_ and the server's own hash of
        # the name in hex (a channel name is an identifier of at most 63 bytes, a stream name
        # may be 128): listeners and notifiers compute it on the same server, and two streams
        # that share one only wake each other's consumers for nothing (the payload is the
        # stream). md5 cost a single enqueue 3 µs of server time more (OpenSSL's set-up).
        """CREATE FUNCTION ephq.channel(p_stream text) RETURNS text
            LANGUAGE sql IMMUTABLE AS $$ SELECT 'ephq_' || to_hex(hashtext(p_stream)) $$""",
        """CREATE FUNCTION ephq.ring(p_stream text) RETURNS void
            LANGUAGE sql AS $$ SELECT pg_notify(ephq.channel(p_stream), p_stream) $$""",
        """CREATE OR REPLACE FUNCTION ephq.release_group(p_stream text, p_grp text, p_id text)
            RETURNS void LANGUAGE plpgsql AS $$
            DECLARE
                v_next ephq.waiting%ROWTYPE;
            BEGIN
                PERFORM 1 FROM ephq.groups g
                    WHERE g.stream = p_stream AND g.grp = p_grp AND g.head = p_id FOR UPDATE;
                IF NOT FOUND THEN
                    RETURN;  -- not the head (a purge, or released already)
                END IF;
                DELETE FROM ephq.waiting w
                    WHERE w.stream = p_stream AND w.grp = p_grp
                      AND w.id = (SELECT min(x.id) FROM ephq.waiting x
                                  WHERE x.stream = p_stream AND x.grp = p_grp)
                    RETURNING * INTO v_next;
                IF v_next.id IS NULL THEN
                    DELETE FROM ephq.groups g WHERE g.stream = p_stream AND g.grp = p_grp;
                    RETURN;
                END IF;
                UPDATE ephq.groups g SET head = v_next.id
                    WHERE g.stream = p_stream AND g.grp = p_grp;
                INSERT INTO ephq.messages (stream, dead, id, attempts, visible_at, data, meta,
                                           grp)
                    VALUES (p_stream, false, v_next.id, v_next.attempts, v_next.visible_at,
                            v_next.data, v_next.meta, p_grp);
                PERFORM ephq.ring(p_stream);
            END
            $$""",
        # Dying releases the group too; a dead letter keeps its group (a redrive rejoins it),
        # but not in a dead-letter stream, where it is a fact (metadata.dead.group).
        """CREATE OR REPLACE FUNCTION ephq.forward_dead_letter() RETURNS trigger
            LANGUAGE plpgsql AS $$
            DECLARE
                v_target text;
                v_earlier jsonb := OLD.meta->'dead';
            BEGIN
                IF OLD.grp IS NOT NULL THEN
                    PERFORM ephq.release_group(OLD.stream, OLD.grp, OLD.id);
                END IF;
                IF jsonb_typeof(v_earlier) = 'object' AND v_earlier->>'stream' <> OLD.stream THEN
                    NEW.meta := jsonb_set(OLD.meta, '{dead}', v_earlier || jsonb_build_object(
                        'dlq_error', NEW.meta->'dead'->'error',
                        'dlq_failed_at', NEW.meta->'dead'->'died_at'));
                END IF;
                SELECT s.dead_letter_stream INTO v_target FROM ephq.streams s
                    WHERE s.name = OLD.stream;
                IF v_target IS NOT NULL THEN
                    INSERT INTO ephq.streams (name) VALUES (v_target) ON CONFLICT DO NOTHING;
                    IF NEW.grp IS NOT NULL THEN
                        NEW.meta := jsonb_set(NEW.meta, '{dead,group}', to_jsonb(NEW.grp));
                        NEW.grp := NULL;
                    END IF;
                    NEW.stream := v_target;
                    NEW.dead := false;
                    NEW.attempts := 0;
                    NEW.token := NULL;
                    PERFORM ephq.ring(v_target);
                END IF;
                RETURN NEW;
            END
            $$""",
        "DROP TRIGGER IF EXISTS forward_dead_letter ON ephq.messages",
        """CREATE TRIGGER forward_dead_letter BEFORE UPDATE ON ephq.messages
            FOR EACH ROW WHEN (NEW.dead AND NOT OLD.dead)
            EXECUTE FUNCTION ephq.forward_dead_letter()""",
        # A batch with groups in one call, in id order (the first of a group becomes its
        # head): one statement per message had cost a round trip each (89 µs a message for
        # 1,000).
        """CREATE FUNCTION ephq.join_groups(p_stream text, p_ids text[], p_groups text[],
                p_datas text[], p_visible bigint) RETURNS void LANGUAGE plpgsql AS $$
            DECLARE
                m record;
            BEGIN
                FOR m IN SELECT t.id, t.grp, t.data
                         FROM unnest(p_ids, p_groups, p_datas) WITH ORDINALITY
                              AS t(id, grp, data, n)
                         ORDER BY t.n
                LOOP
                    IF m.grp IS NULL THEN
                        INSERT INTO ephq.messages (stream, dead, id, visible_at, data)
                            VALUES (p_stream, false, m.id, p_visible, m.data);
                    ELSE
                        PERFORM ephq.join_group(p_stream, m.grp, m.id, 0, p_visible, m.data,
                                                '{}');
                    END IF;
                END LOOP;
                PERFORM ephq.ring(p_stream);
            END
            $$""",
        "ALTER TABLE ephq.messages SET (fillfactor = 50)",
        """CREATE OR REPLACE FUNCTION ephq.claim(p_stream text, p_dead boolean, p_now bigint,
                p_count integer, p_token text, p_visibility bigint, p_died_at text)
            RETURNS TABLE (buried integer, id text, attempts integer, visible_at bigint,
                           token text, data text, meta jsonb, grp text)
            LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
            #variable_conflict use_column
            DECLARE
                v_max integer;
                v_visibility bigint;
                v_take tid[];
                v_bury tid[];
            BEGIN
                SELECT COALESCE(max(s.max_attempts), 5), COALESCE(max(s.visibility_ms), 30000)
                    INTO v_max, v_visibility FROM ephq.streams s WHERE s.name = p_stream;
                SELECT array_agg(p.ctid) FILTER (WHERE p_dead OR p.attempts < v_max),
                       array_agg(p.ctid) FILTER (WHERE NOT p_dead AND p.attempts >= v_max)
                    INTO v_take, v_bury
                    FROM (SELECT m.ctid, m.attempts FROM ephq.messages m
                          WHERE m.stream = p_stream AND m.dead = p_dead
                            AND m.visible_at <= p_now
                          ORDER BY m.id LIMIT p_count
                          FOR UPDATE SKIP LOCKED) p;
                IF v_bury IS NOT NULL THEN
                    UPDATE ephq.messages m SET dead = true, token = NULL, visible_at = p_now,
                        meta = m.meta || jsonb_build_object('dead', jsonb_build_object(
                            'stream', p_stream,
                            'error', CASE WHEN m.token IS NOT NULL THEN 'lease expired'
                                     ELSE 'delivered ' || m.attempts
                                          || ' times; max_attempts is ' || v_max END,
                            'attempts', m.attempts,
                            'died_at', p_died_at))
                    WHERE m.ctid = ANY(v_bury);
                    RETURN QUERY SELECT cardinality(v_bury), NULL::text, NULL::integer,
                        NULL::bigint, NULL::text, NULL::text, NULL::jsonb, NULL::text;
                END IF;
                IF v_take IS NOT NULL THEN
                    RETURN QUERY
                    UPDATE ephq.messages m SET attempts = m.attempts + 1, token = p_token,
                        visible_at = p_now + COALESCE(p_visibility, v_visibility * 1000000)
                    WHERE m.ctid = ANY(v_take)
                    RETURNING 0, m.id, m.attempts, m.visible_at, m.token, m.data,
                              NULLIF(m.meta, '{}'), m.grp;
                END IF;
            END
            $$""",
    ),
    # 4: where rows that are not messages are set aside. ephq writes only messages, but
    # anyone with access to the database can write a row (an INSERT from a trigger, by hand,
    # by another tool): one whose data is not JSON, whose id is not an id or whose metadata is
    # not an object is moved here, whole, when a consumer leases it or `check --repair`
    # finds it, as the file backend moves such a file to its quarantine/ directory. Nothing
    # reads this table but `check`, which lists what it holds.
    (
        """CREATE TABLE ephq.quarantine (
            n bigserial PRIMARY KEY,
            from_table text NOT NULL,
            stream text NOT NULL,
            dead boolean NOT NULL,
            id text NOT NULL,
            attempts integer NOT NULL,
            visible_at bigint NOT NULL,
            token text,
            data text NOT NULL,
            meta jsonb NOT NULL,
            grp text,
            why text NOT NULL,
            set_aside_at bigint NOT NULL
        )""",
        # The settings a stream's row may hold, as `ephq config` takes them: an UPDATE by hand
        # out of bounds (a max_size no message fits, a window of no time, a dead-letter stream
        # no command can name) fails at once. NOT VALID: a row that already is out of bounds
        # keeps the migration from nothing; reading it gives the defaults, and check reports
        # it (and --repair resets it).
        f"""ALTER TABLE ephq.streams ADD CONSTRAINT settings_in_bounds CHECK ({SETTINGS_IN_BOUNDS})
            NOT VALID""",
    ),
    # 5: when a holder's row was written, by the server's clock. A restart ends every
    # connection, live workers' too: a row written before the server started is given a grace
    # to be written again by its live keeper on a new connection before its leases are given
    # away (postgres/holders.py); one written since, whose connection is gone, is a dead
    # worker's at once, as before.
    ("ALTER TABLE ephq.holders ADD COLUMN written_at timestamptz NOT NULL DEFAULT now()",),
)

CREATE_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS ephq.schema_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version integer NOT NULL
)"""

# One lock number for "someone is creating or migrating ephq's schema" (an advisory lock: two
# first uses at once must not both create it).
MIGRATION_LOCK = 0x65706871  # "ephq"


def ensure(cursor: Any) -> int:
    """Create or migrate the schema to VERSION; the version found before. Runs in the caller's
    transaction, under an advisory lock."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    cursor.execute("CREATE SCHEMA IF NOT EXISTS ephq")
    cursor.execute(CREATE_VERSION_TABLE)
    cursor.execute("SELECT version FROM ephq.schema_version")
    row = cursor.fetchone()
    found = 0 if row is None else int(row[0])
    if found > VERSION:
        return found  # a newer ephq made it: the caller refuses to touch it
    for statements in MIGRATIONS[found:]:
        for statement in statements:
            cursor.execute(statement)
    cursor.execute(
        "INSERT INTO ephq.schema_version (version) VALUES (%s) "
        "ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
        (VERSION,),
    )
    return found
