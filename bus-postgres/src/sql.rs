//! The storage's tables and the statements on them, built once from the schema and prefix.

/// Migrations, applied in order and recorded in the migrations table: `(version, name, sql)`.
pub(crate) const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "create_tables",
    include_str!("../migrations/0001_create_tables.sql"),
)];

/// The longest table name the storage makes from a prefix, for PostgreSQL's 63-byte limit.
const LONGEST_SUFFIX: &str = "bus_inbox_handled_at";

/// Table names and statements.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) schema: Option<String>,
    pub(crate) outbox: String,
    pub(crate) inbox: String,
    pub(crate) sagas: String,
    pub(crate) migrations: String,
    pub(crate) inbox_index: String,
    pub(crate) channel: String,

    pub(crate) handled: String,
    pub(crate) record_handled: String,
    pub(crate) insert_outbox: String,
    pub(crate) load_saga: String,
    pub(crate) insert_saga: String,
    pub(crate) update_saga: String,
    pub(crate) delete_saga: String,
    pub(crate) take_ids: String,
    pub(crate) take_due: String,
    pub(crate) delete_ids: String,
    pub(crate) purge_inbox: String,
    pub(crate) count_outbox: String,
}

/// Whether `name` may go into SQL unquoted: lower-case letters, digits and underscores.
fn plain(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Sql {
    /// The names for `schema` (none: the connection's search path) and `prefix`, checked.
    pub(crate) fn new(schema: Option<&str>, prefix: &str) -> Result<Sql, String> {
        let prefix = prefix.to_ascii_lowercase();
        if !plain(&prefix) || prefix.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!(
                "table prefix `{prefix}` must be letters, digits and underscores, not starting with a digit"
            ));
        }
        if prefix.len() + LONGEST_SUFFIX.len() > 63 {
            return Err(format!(
                "table prefix `{prefix}` is too long: PostgreSQL names are at most 63 bytes, and \
                 the longest name made from it is `{prefix}{LONGEST_SUFFIX}`"
            ));
        }
        let schema = match schema {
            Some(s) => {
                let s = s.to_ascii_lowercase();
                if s.is_empty()
                    || s.len() > 63
                    || !plain(&s)
                    || s.starts_with(|c: char| c.is_ascii_digit())
                {
                    return Err(format!(
                        "schema `{s}` must be 1 to 63 letters, digits and underscores, not starting with a digit"
                    ));
                }
                Some(s)
            }
            None => None,
        };
        let qualify = |table: &str| match &schema {
            Some(s) => format!("{s}.{prefix}{table}"),
            None => format!("{prefix}{table}"),
        };
        let outbox = qualify("bus_outbox");
        let inbox = qualify("bus_inbox");
        let sagas = qualify("bus_sagas");
        let migrations = qualify("bus_migrations");
        // Channels are per database, not per schema: the schema goes into the name.
        let channel = match &schema {
            Some(s) => format!("{s}_{prefix}bus_outbox"),
            None => format!("{prefix}bus_outbox"),
        };
        let channel = channel.chars().take(63).collect();
        Ok(Sql {
            handled: format!("SELECT 1 FROM {inbox} WHERE endpoint = $1 AND message_id = $2"),
            record_handled: format!(
                "INSERT INTO {inbox} (endpoint, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            ),
            // Rows go in in the order given, so their ids ascend in it.
            insert_outbox: format!(
                "INSERT INTO {outbox} (destination, headers, body, deliver_at) \
                 SELECT d, h::jsonb, b, a FROM unnest($1::text[], $2::text[], $3::bytea[], $4::timestamptz[]) \
                 WITH ORDINALITY AS u(d, h, b, a, n) ORDER BY n RETURNING id"
            ),
            load_saga: format!("SELECT state::text, version FROM {sagas} WHERE saga = $1 AND id = $2"),
            insert_saga: format!(
                "INSERT INTO {sagas} (saga, id, state, version) VALUES ($1, $2, $3::text::jsonb, 1) \
                 ON CONFLICT DO NOTHING"
            ),
            update_saga: format!(
                "UPDATE {sagas} SET state = $3::text::jsonb, version = version + 1, updated_at = now() \
                 WHERE saga = $1 AND id = $2 AND version = $4"
            ),
            delete_saga: format!("DELETE FROM {sagas} WHERE saga = $1 AND id = $2 AND version = $3"),
            take_ids: format!(
                "SELECT id, destination, headers::text, body, deliver_at FROM {outbox} \
                 WHERE id = ANY($1) ORDER BY id FOR UPDATE SKIP LOCKED"
            ),
            take_due: format!(
                "SELECT id, destination, headers::text, body, deliver_at FROM {outbox} \
                 WHERE created_at <= clock_timestamp() - make_interval(secs => $1) \
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED"
            ),
            delete_ids: format!("DELETE FROM {outbox} WHERE id = ANY($1)"),
            purge_inbox: format!(
                "DELETE FROM {inbox} WHERE handled_at < now() - make_interval(secs => $1)"
            ),
            count_outbox: format!("SELECT count(*) FROM {outbox}"),
            inbox_index: format!("{prefix}bus_inbox_handled_at"),
            schema,
            outbox,
            inbox,
            sagas,
            migrations,
            channel,
        })
    }

    /// A migration's SQL with the names filled in.
    pub(crate) fn migration(&self, sql: &str) -> String {
        sql.replace("{outbox}", &self.outbox)
            .replace("{inbox}", &self.inbox)
            .replace("{sagas}", &self.sagas)
            .replace("{inbox_handled_at_index}", &self.inbox_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_schema_and_prefix_and_bad_ones_are_refused() {
        let sql = Sql::new(Some("Shop"), "T1_").unwrap();
        assert_eq!(sql.outbox, "shop.t1_bus_outbox");
        assert_eq!(sql.channel, "shop_t1_bus_outbox");
        let migration = sql.migration(MIGRATIONS[0].2);
        assert!(migration.contains("shop.t1_bus_sagas"));
        assert!(!migration.contains('{'));
        assert!(Sql::new(None, "x; DROP TABLE y").is_err());
        assert!(Sql::new(None, "1x").is_err());
        assert!(Sql::new(Some(""), "").is_err());
        assert!(Sql::new(None, &"a".repeat(50)).is_err());
    }
}
