//! Errors of the database as [`StorageError`]s whose text says what failed and where, and
//! never carries a password.

use bus_core::StorageError;

/// `what` failed on the server `server` (as [`describe`] writes it).
pub(crate) fn database(what: &str, server: &str, error: tokio_postgres::Error) -> StorageError {
    // `tokio_postgres::Error` prints only its kind ("db error"); the server's message is in
    // its source, and the pipeline shows the context alone.
    let detail = match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    };
    StorageError::other(
        format!(
            "{what} on PostgreSQL ({}) failed: {}",
            server,
            bus_core::scrub_urls(&detail)
        ),
        error,
    )
}

/// The server a configuration names, for messages: hosts, port, database and user, and
/// nothing else of it (the password stays out).
pub(crate) fn describe(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let mut text = format!(
        "host={}",
        if hosts.is_empty() {
            "localhost".to_string()
        } else {
            hosts.join(",")
        }
    );
    if let Some(port) = config.get_ports().first() {
        text.push_str(&format!(" port={port}"));
    }
    if let Some(db) = config.get_dbname() {
        text.push_str(&format!(" dbname={db}"));
    }
    if let Some(user) = config.get_user() {
        text.push_str(&format!(" user={user}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_described_configuration_never_shows_the_password() {
        let config: tokio_postgres::Config =
            "host=db port=5433 user=app password=hunter2 dbname=shop"
                .parse()
                .unwrap();
        let text = describe(&config);
        assert_eq!(text, "host=db port=5433 dbname=shop user=app");
        let url: tokio_postgres::Config = "postgresql://app:hunter2@db/shop".parse().unwrap();
        assert!(!describe(&url).contains("hunter2"));
    }
}
