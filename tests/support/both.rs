//! The behaviour suites run on both stores from one source: [`on_both_stores!`] makes each test
//! it wraps into a module with two tests, `sled` and `postgres`, that run the same body with the
//! store set for the task ([`kind`]); [`super::daemon::TestDaemon`] starts on that store. On
//! PostgreSQL every daemon gets a fresh schema ([`super::pg`]); with no server, the `postgres`
//! test fails under `CI=true` and otherwise skips loudly.

use std::future::Future;

/// Which store a test's daemons run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sled,
    Postgres,
}

tokio::task_local! {
    static KIND: StoreKind;
}

/// The store of the test running (sled outside [`on_both_stores!`]).
pub fn kind() -> StoreKind {
    KIND.try_with(|k| *k).unwrap_or(StoreKind::Sled)
}

/// Runs `test` with its daemons on `kind`; on PostgreSQL only when a server answers (see the
/// module doc).
pub async fn run<F: Future<Output = ()>>(kind: StoreKind, test: F) {
    if kind == StoreKind::Postgres && super::pg::database().await.is_none() {
        return;
    }
    KIND.scope(kind, test).await
}

/// Wraps test functions (attributes and all) so that each runs on both stores: `name::sled` and
/// `name::postgres`.
#[macro_export]
macro_rules! on_both_stores {
    ($( $(#[$m:meta])* async fn $name:ident() $body:block )*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$m])*
            async fn sled() {
                $crate::support::both::run($crate::support::both::StoreKind::Sled, async $body)
                    .await
            }

            $(#[$m])*
            async fn postgres() {
                $crate::support::both::run($crate::support::both::StoreKind::Postgres, async $body)
                    .await
            }
        }
    )*};
}
