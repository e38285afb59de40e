//! The schema: applying the migrations under `migrations/` (`riskstream
//! migrate`) and checking, before the engine starts, that they are applied.
//!
//! The engine never migrates: it logs in as a member of `riskstream_writer`,
//! which may not create or alter anything. `riskstream migrate` logs in as a
//! member of [`OWNER_ROLE`] and becomes that role, so every object belongs to
//! the group and not to one login, which can then be replaced or rotated.

use sqlx::migrate::{MigrateError, Migration, Migrator};
use sqlx::PgPool;

/// The migrations under `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The group role that owns every object of the schema.
pub const OWNER_ROLE: &str = "riskstream_owner";

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Migrated {
    /// The role the migrations ran as (and that owns what they created).
    pub role: String,
    /// The newest migration now applied.
    pub version: i64,
}

/// Apply the pending migrations (idempotent).
///
/// The session becomes [`OWNER_ROLE`] when its login may (a member, or a
/// superuser), the role may create in the schema, and nothing there belongs
/// to anyone else yet. Otherwise it migrates with its own rights: a
/// superuser bootstrapping the roles, or a database migrated before the
/// roles existed, whose objects the least-privilege migration then hands to
/// the owner. A login that could not hand them over is refused up front,
/// naming who can.
pub async fn migrate(pool: &PgPool) -> Result<Migrated, SchemaError> {
    // A role set on a pooled connection would outlive this call: use a
    // connection of our own and close it.
    let mut conn = pool.acquire().await?.detach();
    let become_owner: bool = sqlx::query_scalar(
        "SELECT EXISTS (
                SELECT FROM pg_roles r
                 WHERE r.rolname = $1
                   AND pg_has_role(session_user, r.oid, 'MEMBER')
                   AND has_schema_privilege(r.oid, 'public', 'CREATE')
                   AND NOT EXISTS (
                       SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
                          AND c.relowner <> r.oid))",
    )
    .bind(OWNER_ROLE)
    .fetch_one(&mut conn)
    .await?;
    if become_owner {
        sqlx::query(&format!("SET ROLE {OWNER_ROLE}"))
            .execute(&mut conn)
            .await?;
    } else if let Some((object, owner, login)) = sqlx::query_as::<_, (String, String, String)>(
        "SELECT c.relname::text, pg_get_userbyid(c.relowner)::text, session_user::text
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
            AND NOT pg_has_role(session_user, c.relowner, 'USAGE')
          ORDER BY 1 LIMIT 1",
    )
    .fetch_optional(&mut conn)
    .await?
    {
        let _ = sqlx::Connection::close(conn).await;
        return Err(SchemaError::Ownership(format!(
            "public.{object} is owned by {owner}, which {login} cannot give to {OWNER_ROLE}: \
             run `riskstream migrate` once as {owner} or a superuser (postgres.migrate_url), \
             then as a member of {OWNER_ROLE}"
        )));
    }
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut conn)
        .await?;
    let result = MIGRATOR.run(&mut conn).await;
    let _ = sqlx::Connection::close(conn).await;
    result?;
    Ok(Migrated {
        role,
        version: MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0),
    })
}

/// Why the schema cannot be migrated, or the engine must not start on it.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the database is not migrated for this riskstream: {0}; run `riskstream migrate` first (as the schema owner, postgres.migrate_url)")]
    NotMigrated(String),
    #[error("{0}")]
    Ownership(String),
    #[error("migration: {0}")]
    Migrate(#[from] MigrateError),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
}

/// One row of sqlx's `_sqlx_migrations`.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub version: i64,
    pub success: bool,
    pub checksum: Vec<u8>,
}

/// Every migration this binary embeds must be applied, successfully and
/// unchanged. Returns the versions the database has that this binary does
/// not know (a newer riskstream migrated it): the engine may still run, as
/// migrations add and never take away what older engines use.
pub async fn check_migrations(pool: &PgPool) -> Result<Vec<i64>, SchemaError> {
    let rows: Vec<(i64, bool, Vec<u8>)> =
        match sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
            .fetch_all(pool)
            .await
        {
            Ok(rows) => rows,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
                return Err(SchemaError::NotMigrated(
                    "no migration is applied (no _sqlx_migrations table)".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        };
    let applied: Vec<Applied> = rows
        .into_iter()
        .map(|(version, success, checksum)| Applied {
            version,
            success,
            checksum,
        })
        .collect();
    compare(&applied, MIGRATOR.iter())
}

/// [`check_migrations`] without the database.
pub fn compare<'a>(
    applied: &[Applied],
    embedded: impl IntoIterator<Item = &'a Migration>,
) -> Result<Vec<i64>, SchemaError> {
    if let Some(a) = applied.iter().find(|a| !a.success) {
        return Err(SchemaError::NotMigrated(format!(
            "migration {} failed part-way",
            a.version
        )));
    }
    let embedded: Vec<&Migration> = embedded
        .into_iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .collect();
    let mut pending = Vec::new();
    for m in &embedded {
        match applied.iter().find(|a| a.version == m.version) {
            None => pending.push(format!("{} ({})", m.version, m.description)),
            Some(a) if a.checksum != *m.checksum => {
                return Err(SchemaError::NotMigrated(format!(
                    "migration {} ({}) differs from the one applied to the database",
                    m.version, m.description
                )))
            }
            Some(_) => {}
        }
    }
    if !pending.is_empty() {
        return Err(SchemaError::NotMigrated(format!(
            "{} migration(s) pending: {}",
            pending.len(),
            pending.join(", ")
        )));
    }
    Ok(applied
        .iter()
        .map(|a| a.version)
        .filter(|v| !embedded.iter().any(|m| m.version == *v))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(n: usize) -> Vec<Applied> {
        MIGRATOR
            .iter()
            .take(n)
            .map(|m| Applied {
                version: m.version,
                success: true,
                checksum: m.checksum.to_vec(),
            })
            .collect()
    }

    fn refusal(result: Result<Vec<i64>, SchemaError>) -> String {
        match result {
            Err(e @ SchemaError::NotMigrated(_)) => e.to_string(),
            other => panic!("must refuse to start, got {other:?}"),
        }
    }

    #[test]
    fn all_applied_and_unchanged_passes() {
        let all = applied(usize::MAX);
        assert!(all.len() >= 3, "the least-privilege migration is embedded");
        assert_eq!(compare(&all, MIGRATOR.iter()).unwrap(), Vec::<i64>::new());
    }

    #[test]
    fn pending_migrations_are_named_with_the_way_out() {
        let n = MIGRATOR.iter().count();
        let text = refusal(compare(&applied(n - 1), MIGRATOR.iter()));
        let last = MIGRATOR.iter().last().unwrap();
        assert!(text.contains("1 migration(s) pending"), "{text}");
        assert!(text.contains(&last.version.to_string()), "{text}");
        assert!(text.contains("run `riskstream migrate`"), "{text}");
        let text = refusal(compare(&[], MIGRATOR.iter()));
        assert!(
            text.contains(&format!("{n} migration(s) pending")),
            "{text}"
        );
    }

    #[test]
    fn a_changed_or_failed_migration_is_refused() {
        let mut edited = applied(usize::MAX);
        edited[0].checksum[0] ^= 1;
        assert!(refusal(compare(&edited, MIGRATOR.iter())).contains("differs"));
        let mut dirty = applied(usize::MAX);
        dirty.last_mut().unwrap().success = false;
        assert!(refusal(compare(&dirty, MIGRATOR.iter())).contains("failed part-way"));
    }

    #[test]
    fn migrations_from_a_newer_riskstream_are_reported_not_refused() {
        let mut newer = applied(usize::MAX);
        newer.push(Applied {
            version: 99991231000001,
            success: true,
            checksum: vec![0; 48],
        });
        assert_eq!(
            compare(&newer, MIGRATOR.iter()).unwrap(),
            vec![99991231000001]
        );
    }
}
