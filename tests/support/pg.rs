//! A PostgreSQL database for one test: a fresh schema of its own on the server at
//! `QRBRIDGE_TEST_DATABASE_URL` (default [`DEFAULT_URL`]), selected by the URL it hands out
//! (`options=-csearch_path=…`), dropped when the test ends. Tests on one server run side by side,
//! each in its own schema. When no server answers, the test fails under `CI=true` and otherwise
//! skips with a loud message.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio_postgres::NoTls;

/// The server every machine of the project runs (trust authentication).
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A schema of the test's own; dropped (with everything in it) on drop.
pub struct PgTest {
    /// The database URL selecting the schema: what the store connects to.
    pub url: String,
    pub schema: String,
    /// The server's URL as configured (no schema).
    server: String,
}

/// The server's URL: `QRBRIDGE_TEST_DATABASE_URL`, or [`DEFAULT_URL`].
pub fn server_url() -> String {
    std::env::var("QRBRIDGE_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

/// A fresh schema for the calling test, or `None` (after a loud message) when no server answers
/// and `CI` is not `true`.
pub async fn database() -> Option<PgTest> {
    let server = server_url();
    let client = match connect(&server).await {
        Ok(c) => c,
        Err(e) => {
            let e = match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            };
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("PostgreSQL is not reachable at {server} ({e}), and CI=true");
            }
            // Straight to the process's standard error: the test harness captures `eprintln!`.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n!!! SKIPPED: PostgreSQL not reachable at {server} ({e}); set \
                 QRBRIDGE_TEST_DATABASE_URL, or CI=true to fail instead !!!\n"
            );
            return None;
        }
    };
    let schema = schema_name();
    client
        .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
        .await
        .unwrap_or_else(|e| panic!("creating schema {schema} at {server}: {e}"));
    Some(PgTest { url: with_schema(&server, &schema), schema, server })
}

/// A connection of its own to `url` (its connection task runs on the current runtime).
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

impl PgTest {
    /// A connection of its own to the test's schema (to look at, or hold, what the store can't).
    pub async fn raw(&self) -> tokio_postgres::Client {
        connect(&self.url).await.unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url))
    }
}

impl Drop for PgTest {
    fn drop(&mut self) {
        // Drop is not async: a thread of its own with a runtime of its own, so this works
        // whatever runtime (if any) the test ran on — while the test's runtime waits here, its
        // connections' tasks cannot finish what they were doing (a rollback, a close).
        let (server, schema) = (self.server.clone(), self.schema.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let c = connect(&server).await.map_err(std::io::Error::other)?;
                // The test's own connections first (they carry the schema's name): one the
                // test left in a transaction would hold locks the drop waits for.
                c.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                      WHERE application_name = $1 AND pid <> pg_backend_pid()",
                    &[&schema],
                )
                .await
                .map_err(std::io::Error::other)?;
                c.batch_execute(&format!(
                    "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                ))
                .await
                .map_err(std::io::Error::other)
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("test schema {} left behind: {e}", self.schema),
            Err(_) => eprintln!("test schema {} left behind: the drop panicked", self.schema),
        }
    }
}

/// `qrbridge_t_<test>_<process>_<n>_<random>`: the test's name (the thread libtest runs it on)
/// so a schema left behind says whose it was; the rest so no two tests, runs or machines
/// sharing a server meet. At most 63 bytes (PostgreSQL's limit for a name).
fn schema_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let test: String = std::thread::current()
        .name()
        .unwrap_or("test")
        .rsplit("::")
        .next()
        .unwrap_or("test")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .take(28)
        .collect();
    let tail = format!(
        "_{}_{}_{:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    );
    format!("qrbridge_t_{test}{tail}")
}

/// `url` selecting `schema` first on the search path, its connections named after it
/// (`application_name`: see them in `pg_stat_activity`, and end them on drop).
pub fn with_schema(url: &str, schema: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-csearch_path%3D{schema}&application_name={schema}")
    } else {
        format!("{url} options='-csearch_path={schema}' application_name='{schema}'")
    }
}
