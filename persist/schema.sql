-- memsession: the sessions table PostgresStore(create_table=True) creates, with the default names.
-- Other names: memsession ddl --schema S --table T --column key=sid ...
CREATE TABLE IF NOT EXISTS "memsession" (
    "sid" text COLLATE "C" PRIMARY KEY,
    "sess" json NOT NULL,
    "version" bigint NOT NULL,
    "origin" bigint NOT NULL,
    "created" double precision NOT NULL,
    "accessed" double precision NOT NULL,
    "expire" double precision NOT NULL,
    "deleted" boolean NOT NULL DEFAULT false,
    "stamps" json,
    "seen" json
);
CREATE INDEX IF NOT EXISTS "memsession_expire_idx" ON "memsession" ("expire");
ALTER TABLE "memsession" ADD COLUMN IF NOT EXISTS "stamps" json, ADD COLUMN IF NOT EXISTS "seen" json;
COMMENT ON COLUMN "memsession"."sid" IS 'memsession session key: SHA-256 (hex) of the session id; the id itself is never stored';
-- Optional, for PostgresStore(change_log=True) (persist.postgres.changelog): the change log, which
-- create_table=True makes with the rest (ddl(change_log=True) prints it with other names):
-- CREATE TABLE IF NOT EXISTS "memsession_changes" (
--     "host" text COLLATE "C" NOT NULL,
--     "seq" bigint NOT NULL,
--     "first_seq" bigint NOT NULL,
--     "keys" text COLLATE "C" NOT NULL,
--     "versions" bigint[] NOT NULL,
--     "origins" bigint[] NOT NULL,
--     "deleted" boolean[] NOT NULL,
--     "cleared" bigint NOT NULL DEFAULT 0,
--     "at" double precision NOT NULL,
--     PRIMARY KEY ("host", "seq")
-- );
-- DO $$ BEGIN
--     IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass('"memsession_changes"') AND attname = 'keys')
--        AND EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass('"memsession_changes"')
--                    AND attname IN ('keys', 'versions', 'origins', 'deleted')
--                    AND attstorage <> 'e') THEN
--         ALTER TABLE "memsession_changes"
--             ALTER COLUMN "keys" SET STORAGE EXTERNAL,
--             ALTER COLUMN "versions" SET STORAGE EXTERNAL,
--             ALTER COLUMN "origins" SET STORAGE EXTERNAL,
--             ALTER COLUMN "deleted" SET STORAGE EXTERNAL;
--     END IF;
-- END $$;
-- CREATE TABLE IF NOT EXISTS "memsession_changes_hosts" (
--     "host" text COLLATE "C" PRIMARY KEY,
--     "seq" bigint NOT NULL
-- );
-- CREATE TABLE IF NOT EXISTS "memsession_changes_pruned" (
--     "host" text COLLATE "C" NOT NULL,
--     "part" smallint NOT NULL,
--     "seq" bigint NOT NULL,
--     PRIMARY KEY ("host", "part")
-- );
