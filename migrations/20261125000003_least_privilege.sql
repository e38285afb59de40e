-- Least privilege (issue 9). Three group roles, none of which can log in:
--
--   riskstream_owner    owns every object; `riskstream migrate` runs as it
--   riskstream_writer   the engine: reads what it needs, inserts its rows,
--                       updates only kafka_offsets (claims, epochs, offsets);
--                       never updates or deletes a decision or a label
--   riskstream_analyst  reads every table and view, writes nothing
--
-- Login users and their passwords are secrets, so they are not created here:
-- grant these roles to them (scripts/stack does it for the local stack;
-- docs/OPERATIONS.md). Roles are cluster-wide while this migration runs once
-- per database, hence the existence checks. The first migration already
-- created riskstream_writer and riskstream_analyst (NOLOGIN) and granted the
-- writer UPDATE on everything: that is revoked below.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['riskstream_owner', 'riskstream_writer', 'riskstream_analyst'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = current_user
                                                 AND (rolsuper OR rolcreaterole)) THEN
                RAISE EXCEPTION 'role % does not exist and % may not create roles', r, current_user
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = 'create it first (scripts/stack up does; see docs/OPERATIONS.md)';
            END IF;
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;

-- Everything in the schema, including sqlx's own _sqlx_migrations (the
-- migrator writes it), belongs to riskstream_owner. A database migrated
-- before this file by another role (e.g. a superuser) must run this
-- migration once as that role or a superuser; say so instead of a bare
-- "must be owner of table".
DO $$
DECLARE
    obj record;
BEGIN
    -- Tables first: their owned sequences (serial columns) follow them and
    -- may not be given away on their own.
    FOR obj IN
        SELECT c.relname,
               CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                              WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                              ELSE 'TABLE' END AS kind,
               pg_get_userbyid(c.relowner) AS owner
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public'
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
           AND c.relowner <> 'riskstream_owner'::regrole
           AND NOT (c.relkind = 'S' AND EXISTS (
                   SELECT FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
         ORDER BY c.relkind = 'S', c.relkind IN ('v', 'm'), c.relname
    LOOP
        BEGIN
            EXECUTE format('ALTER %s public.%I OWNER TO riskstream_owner', obj.kind, obj.relname);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION '% public.% is owned by %, which % cannot give to riskstream_owner',
                            lower(obj.kind), obj.relname, obj.owner, current_user
                USING ERRCODE = 'insufficient_privilege',
                      HINT = format('run `riskstream migrate` once as %s or a superuser '
                                    '(RISKSTREAM_POSTGRES__MIGRATE_URL), then as the migrator', obj.owner);
        END;
    END LOOP;
END
$$;

-- The owner creates what later migrations add. (It already may when it owns
-- the database, the usual setup; a superuser migrating a database it owns
-- grants it here.)
DO $$
BEGIN
    IF NOT has_schema_privilege('riskstream_owner', 'public', 'CREATE') THEN
        GRANT USAGE, CREATE ON SCHEMA public TO riskstream_owner;
    END IF;
END
$$;

-- Start from nothing: no privileges for PUBLIC, the writer or the analyst on
-- anything in the schema, and nobody but the owner creates objects in it.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC, riskstream_writer, riskstream_analyst;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM PUBLIC, riskstream_writer, riskstream_analyst;
REVOKE CREATE ON SCHEMA public FROM PUBLIC, riskstream_writer, riskstream_analyst;

-- The engine. SELECT only where it reads: state rebuilds (risk_decisions,
-- labels), partition claims and the watermark (kafka_offsets), the version
-- of its threshold set, and the migration check at startup.
GRANT SELECT ON risk_decisions, labels, kafka_offsets, threshold_sets TO riskstream_writer;
DO $$
BEGIN
    -- sqlx's table; absent when the files are applied by other means
    -- (bench/baseline.py, psql).
    IF to_regclass('public._sqlx_migrations') IS NOT NULL THEN
        GRANT SELECT ON _sqlx_migrations TO riskstream_writer;
    END IF;
END
$$;
GRANT INSERT ON risk_decisions, attention_explanations, labels, dead_letters,
                model_versions, threshold_sets, kafka_offsets
    TO riskstream_writer;
-- The claim/epoch/offset protocol is the only UPDATE the engine does.
GRANT UPDATE ON kafka_offsets TO riskstream_writer;
GRANT USAGE ON SEQUENCE threshold_sets_version_seq, dead_letters_id_seq TO riskstream_writer;

-- Analysts read every table and view.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO riskstream_analyst;

-- Objects a later migration creates (as riskstream_owner) are readable by
-- analysts at once; the engine gets nothing until that migration grants it
-- exactly what the engine needs.
ALTER DEFAULT PRIVILEGES FOR ROLE riskstream_owner GRANT SELECT ON TABLES TO riskstream_analyst;
