//! The tables, created and upgraded by [`Postgres::migrate`](super::Postgres::migrate).

use super::{Postgres, error, pool_error};
use crate::Error;

/// Each migration, in order: `migrations[n]` takes the schema from version `n` to `n + 1`.
/// `{s}` stands for the quoted schema name. Never edit one that shipped; add another.
const MIGRATIONS: &[&str] = &[
    // 1: the queue, its archive.
    r#"
CREATE TABLE {s}.messages (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue        text        NOT NULL,
    attributes   text[]      NOT NULL DEFAULT '{}',
    body         bytea       NOT NULL,
    ordering_key text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    run_at       timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0,
    lease_owner  text,
    last_error   text
) WITH (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_vacuum_cost_delay = 0
);
CREATE INDEX messages_queue ON {s}.messages (queue, id);
CREATE INDEX messages_key ON {s}.messages (queue, ordering_key, id) WHERE ordering_key IS NOT NULL;
CREATE TABLE {s}.archive (
    id           bigint      PRIMARY KEY,
    queue        text        NOT NULL,
    attributes   text[]      NOT NULL,
    body         bytea       NOT NULL,
    ordering_key text,
    created_at   timestamptz NOT NULL,
    attempts     integer     NOT NULL,
    outcome      text        NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX archive_queue ON {s}.archive (queue, finished_at);
"#,
];

/// The schema version this msgio creates and understands.
pub(super) const VERSION: i32 = MIGRATIONS.len() as i32;

pub(super) async fn migrate(postgres: &Postgres) -> Result<(), Error> {
    let s = &postgres.inner.quoted;
    let mut client = postgres.inner.pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(error)?;
    // One migrator at a time per schema: `CREATE ... IF NOT EXISTS` alone races.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('msgio.migrate.' || $1::text))",
        &[&postgres.inner.schema.as_ref()],
    )
    .await
    .map_err(error)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_version (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(error)?;
    let row = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {s}.schema_version"),
            &[],
        )
        .await
        .map_err(error)?;
    let current: i32 = row.get(0);
    if current > VERSION {
        return Err(newer(&postgres.inner.schema, current));
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(&sql.replace("{s}", s))
            .await
            .map_err(error)?;
        let version = n as i32 + 1;
        tx.execute(
            &format!("INSERT INTO {s}.schema_version (version) VALUES ($1)"),
            &[&version],
        )
        .await
        .map_err(error)?;
    }
    tx.commit().await.map_err(error)
}

/// The schema's version: 0 when it was never migrated.
pub(super) async fn version(postgres: &Postgres) -> Result<i32, Error> {
    let client = postgres.inner.pool.get().await.map_err(pool_error)?;
    let row = client
        .query_one(
            "SELECT to_regclass($1::text) IS NOT NULL",
            &[&format!("{}.schema_version", postgres.inner.quoted)],
        )
        .await
        .map_err(error)?;
    if !row.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_one(
            &format!(
                "SELECT coalesce(max(version), 0) FROM {}.schema_version",
                postgres.inner.quoted
            ),
            &[],
        )
        .await
        .map_err(error)?;
    Ok(row.get(0))
}

/// Checks that the schema is at the version this msgio knows.
pub(super) async fn check(postgres: &Postgres) -> Result<(), Error> {
    let found = version(postgres).await?;
    if found > VERSION {
        return Err(newer(&postgres.inner.schema, found));
    }
    if found < VERSION {
        return Err(Error::invalid_config(
            "postgres schema",
            format!(
                "schema {:?} is at version {found}, this msgio needs {VERSION}: call Postgres::migrate() first",
                postgres.inner.schema
            ),
        ));
    }
    Ok(())
}

fn newer(schema: &str, found: i32) -> Error {
    Error::invalid_config(
        "postgres schema",
        format!(
            "schema {schema:?} is at version {found}, newer than this msgio knows ({VERSION}): upgrade msgio"
        ),
    )
}
