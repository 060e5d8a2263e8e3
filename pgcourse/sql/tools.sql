-- The course's narrow tools, installed by pgcourse.provision into every course database (through
-- the template) as the admin role, a superuser. Each is SECURITY DEFINER: it runs with the admin's
-- rights, so it checks everything it is given and does one thing. Its search_path is pinned to
-- pg_catalog (pg_temp last), so no object the learner creates can stand in for one it calls.
-- EXECUTE is revoked from PUBLIC; provision grants it to the learner role only.
-- Every refusal is SQLSTATE 42501 (insufficient_privilege), with a hint that says what is allowed.

CREATE SCHEMA pgcourse;  -- provision comments it with the version of this file
REVOKE ALL ON SCHEMA pgcourse FROM PUBLIC;


-- Demo roles (lessons 01 and 02, exercise 02's check) -----------------------------------------------
-- Only names lessonNN_... or exerciseNN_...; LOGIN and nothing else: no attribute, no membership, a
-- connection limit, CONNECT on the database it was made in only. The password arrives as a SCRAM
-- verifier (psycopg: conn.pgconn.encrypt_password(password, role, b"scram-sha-256")), so it never
-- travels or gets logged in clear. A role is marked (a comment only the admin can write) with the role
-- that made it, and only that role may change or drop it.
-- In a room (roles room_<name>, marked 'pgcourse room learner' by pgcourse.room), demo roles are server-wide,
-- so a room learner makes only names ending in _<name> (its own, after a name of the lesson's), or an exercise check's name with a random
-- hex token (exerciseNN_<word>_<token>, which no one can guess ahead), and no one makes a name ending in
-- another room learner's _<name>. A room learner's demo roles may hold 24 connections together (the
-- room's sizing counts them: provision.DEMO_CONNECTIONS), checked under a lock on pg_authid, which is
-- server-wide, so two sessions (even in two databases) cannot both pass the check at once.

CREATE FUNCTION pgcourse.demo_connection_budget() RETURNS integer
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT 24 $$;  -- lesson 02a's eight demo roles at the default limit of 3; = provision.DEMO_CONNECTIONS

CREATE FUNCTION pgcourse.room_learner_of(role_name name) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT substr(a.rolname, 6) FROM pg_authid a
      WHERE a.rolname = role_name AND a.rolname ~ '^room_[a-z][a-z0-9]{0,15}$'
        AND shobj_description(a.oid, 'pg_authid') = 'pgcourse room learner' $$;  -- = pgcourse.room.MARKER

CREATE FUNCTION pgcourse.demo_role_marker() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT 'pgcourse demo role of ' || session_user $$;

CREATE FUNCTION pgcourse.check_demo_role_name(role_name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF role_name IS NULL OR role_name !~ '^(lesson|exercise)[0-9]{2}_[a-z0-9_]{1,40}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('permission denied: %s is not a course demo role name', coalesce(quote_literal(role_name), 'NULL')),
            HINT = 'A demo role''s name starts with lessonNN_ or exerciseNN_ (NN two digits), then 1-40 of a-z, 0-9 and _.';
    END IF;
END $$;

CREATE FUNCTION pgcourse.create_demo_role(role_name text, password_verifier text DEFAULT NULL,
                                          connection_limit integer DEFAULT 3) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    marker text := pgcourse.demo_role_marker();
    budget integer := pgcourse.demo_connection_budget();
    found oid;
    owner text;
    suffix text;
    held bigint;
    made bigint;
BEGIN
    PERFORM pgcourse.check_demo_role_name(role_name);
    IF password_verifier IS NOT NULL AND (length(password_verifier) > 400 OR password_verifier !~
            '^SCRAM-SHA-256\$[0-9]{1,7}:[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}:[A-Za-z0-9+/]+={0,2}$') THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = 'permission denied: the password must be a SCRAM-SHA-256 verifier, not a password or options',
            HINT = 'Compute it on the client: conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").';
    END IF;
    IF connection_limit IS NULL OR connection_limit NOT BETWEEN 1 AND 10 THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('permission denied: a demo role''s connection limit is 1 to 10, not %s', coalesce(connection_limit::text, 'NULL'));
    END IF;
    owner := pgcourse.room_learner_of(session_user);
    suffix := substring(role_name from '_([a-z0-9]+)$');
    IF owner IS NOT NULL AND role_name !~ ('^(lesson|exercise)[0-9]{2}_[a-z0-9_]*[a-z0-9]_' || owner || '$')
            AND role_name !~ '^exercise[0-9]{2}_[a-z]+_[0-9a-f]{4,12}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('permission denied: in a room, your demo roles'' names end in _%s, not as %I does', owner, role_name),
            HINT = format('Name it with pgcourse.roomenv.demo_role(name): %s_%s (demo roles are shared by the whole server).',
                          role_name, owner);
    END IF;
    IF suffix IS DISTINCT FROM owner AND pgcourse.room_learner_of(('room_' || suffix)::name) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('permission denied: %I ends in the name of the room learner %s', role_name, suffix),
            HINT = 'Demo names ending in _<learner> belong to that room learner: choose another name.';
    END IF;
    -- Server-wide (pg_authid is a shared catalog), held to the end of the transaction: the budget below is
    -- checked and spent by one session at a time. Logins only read pg_authid and are not held up.
    LOCK TABLE pg_catalog.pg_authid IN SHARE ROW EXCLUSIVE MODE;
    SELECT oid INTO found FROM pg_authid WHERE rolname = role_name;
    IF found IS NOT NULL AND shobj_description(found, 'pg_authid') IS DISTINCT FROM marker THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('permission denied: the role %I exists and is not a demo role made by %I', role_name, session_user),
            HINT = 'Choose another name.';
    END IF;
    SELECT coalesce(sum(CASE WHEN a.rolconnlimit < 0 THEN budget ELSE a.rolconnlimit END), 0), count(*)
    INTO held, made
    FROM pg_authid a JOIN pg_shdescription d ON d.objoid = a.oid AND d.classoid = 'pg_authid'::regclass
    WHERE d.description = marker AND a.oid IS DISTINCT FROM found;
    IF made >= 50 THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('permission denied: %s already has 50 demo roles', session_user),
            HINT = 'Drop some with pgcourse.drop_demo_role(name).';
    END IF;
    IF owner IS NOT NULL AND held + connection_limit > budget THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('permission denied: your demo roles may hold %s connections together; they hold %s,'
                             ' and %I would add %s', budget, held, role_name, connection_limit),
            HINT = 'In a room every learner''s share of the server is counted: drop demo roles you no longer need'
                   ' with pgcourse.drop_demo_role(name), or give a smaller connection limit.';
    END IF;
    IF found IS NULL THEN
        EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS'
                       ' CONNECTION LIMIT %s PASSWORD %L', role_name, connection_limit, password_verifier);
        EXECUTE format('COMMENT ON ROLE %I IS %L', role_name, marker);
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), role_name);
        RETURN 'created';
    END IF;
    EXECUTE format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS'
                   ' CONNECTION LIMIT %s PASSWORD %L', role_name, connection_limit, password_verifier);
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), role_name);
    RETURN 'updated';
END $$;

CREATE FUNCTION pgcourse.drop_demo_role(role_name text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found oid;
BEGIN
    PERFORM pgcourse.check_demo_role_name(role_name);
    SELECT oid INTO found FROM pg_authid WHERE rolname = role_name;
    IF found IS NULL THEN
        RETURN false;
    END IF;
    IF shobj_description(found, 'pg_authid') IS DISTINCT FROM pgcourse.demo_role_marker() THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('permission denied: the role %I is not a demo role made by %I', role_name, session_user);
    END IF;
    EXECUTE format('DROP OWNED BY %I', role_name);  -- what it made here, and every right given to it
    EXECUTE format('DROP ROLE %I', role_name);
    RETURN true;
END $$;


-- Server-side COPY FROM a file (lesson 05) ----------------------------------------------------------
-- Only a bare file name (letters, digits, ., _ and -; no /, no ..) in the course folder, the folder
-- course_files beside the server's data directory. The file must be a regular file with one link
-- (no symbolic link out of the folder, no hard link to another file), which the server's own `find`
-- says (there is no lstat in SQL). The COPY runs as the admin, so the table may hold nothing that
-- runs code during it: a plain table the caller may insert into, without triggers, CHECK constraints,
-- generated columns, indexes on expressions or partial indexes, or column types made in the
-- database (domains, enums, composites). The table is locked before it is inspected, and the caller
-- must be in a READ COMMITTED transaction, so what is inspected is what the COPY meets.

CREATE FUNCTION pgcourse.course_file_directory() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT regexp_replace(current_setting('data_directory'), '/+[^/]+/*$', '') || '/course_files' $$;

CREATE FUNCTION pgcourse.copy_from_course_file(target regclass, file_name text, file_format text DEFAULT 'csv',
                                               header boolean DEFAULT false) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    folder text := pgcourse.course_file_directory();
    path text;
    problem text;
    loaded bigint;
BEGIN
    IF file_name IS NULL OR file_name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$' OR strpos(file_name, '..') > 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('permission denied: %s is not the bare name of a file in the course folder',
                             coalesce(quote_literal(file_name), 'NULL')),
            HINT = 'Give a name such as readings.csv (letters, digits, ., _ and -; no / and no ..) of a file in pgcourse.course_file_directory().';
    END IF;
    IF file_format IS NULL OR file_format NOT IN ('csv', 'text', 'binary') THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('permission denied: file_format is csv, text or binary, not %s',
                             coalesce(quote_literal(file_format), 'NULL'));
    END IF;
    IF target IS NULL OR NOT coalesce(has_table_privilege(session_user, target, 'INSERT'), false)
            OR NOT has_schema_privilege(session_user, (SELECT relnamespace FROM pg_class WHERE oid = target), 'USAGE') THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('permission denied: %s may not insert into %s', session_user, coalesce(target::text, 'NULL'));
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = 'permission denied: pgcourse.copy_from_course_file runs only in a READ COMMITTED transaction',
            HINT = 'Call it on its own (autocommit) or in a READ COMMITTED transaction.';
    END IF;
    EXECUTE format('LOCK TABLE %s IN ROW EXCLUSIVE MODE', target);  -- no DDL on it until we commit
    SELECT CASE
        WHEN c.relkind <> 'r' OR c.relispartition THEN 'it is not a plain table'
        WHEN am.amname IS DISTINCT FROM 'heap' THEN 'it does not use the heap access method'
        WHEN EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal) THEN 'it has triggers'
        WHEN EXISTS (SELECT FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'c') THEN 'it has CHECK constraints'
        WHEN EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL))
            THEN 'it has an index on an expression, or a partial index'
        WHEN EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                     AND (a.attgenerated <> '' OR a.atttypid >= 16384))
            THEN 'a column is generated, or has a type made in the database (a domain, an enum, a composite)'
        END
    INTO problem
    FROM pg_class c LEFT JOIN pg_am am ON am.oid = c.relam
    WHERE c.oid = target;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('permission denied: pgcourse.copy_from_course_file does not load into %s: %s', target, problem),
            HINT = 'It runs with the admin''s rights, so the table may hold nothing that runs code: load into a plain table, then move the rows.';
    END IF;
    IF strpos(folder, '''') > 0 THEN
        RAISE EXCEPTION 'the course folder''s path % holds a quote', folder;
    END IF;
    path := folder || '/' || file_name;
    IF pg_stat_file(path, true) IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_file',
            MESSAGE = format('there is no file %L in the course folder %s', file_name, folder);
    END IF;
    BEGIN  -- a regular file with one link, not followed through a symbolic link; no rows are written
        EXECUTE format('COPY (SELECT 1 WHERE false) TO PROGRAM %L',
                       format('find ''%s'' -prune -type f -links 1 | grep -q .', path));
    EXCEPTION WHEN external_routine_exception THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('permission denied: %L is not a regular file in the course folder', file_name),
            HINT = format('Put the file itself (not a link, not a folder) into %s.', folder);
    END;
    EXECUTE format('COPY %s FROM %L (FORMAT %s%s)', target, path, file_format, CASE WHEN header THEN ', HEADER' ELSE '' END);
    GET DIAGNOSTICS loaded = ROW_COUNT;
    RETURN loaded;
END $$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgcourse FROM PUBLIC;
