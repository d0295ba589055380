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
