//! The doorbell, from the relay's side: going to sleep and waking up, on the relay's own
//! LISTEN connection (the lock is held by that session). Writers' side: the outbox trigger.
//! Why a lock and not a flag: db/migrations/0013_doorbell_that_never_waits.sql.

use tokio_postgres::types::Type;

use crate::locks;
use crate::sql::{AsClient, Sql, StoreError};

/// What came of a relay's attempt to go to sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepAttempt {
    /// This relay holds "relay asleep": every writer from now on rings.
    Asleep,
    /// Another relay is asleep: writers ring for it, and every relay hears the bell.
    AnotherRelaySleeps,
    /// A writer is in flight that found the relays awake and will not ring: keep looking.
    WriterInFlight,
}

/// Tries to take "relay asleep" for this session, never waiting. When it is taken already, a
/// second try (shared, released at once) tells a sleeping relay (exclusive) from writers in
/// flight (shared). One statement; CASE evaluates its branches in order.
pub async fn try_to_sleep<C: AsClient>(db: &Sql<C>) -> Result<SleepAttempt, StoreError> {
    let row = db
        .query_typed_one(
            "select case when pg_try_advisory_lock($1) then 'asleep'
                         when pg_try_advisory_lock_shared($1)
                              then case when pg_advisory_unlock_shared($1) then 'writer'
                                        else 'writer' end
                         else 'another' end",
            &[(&locks::RELAY_ASLEEP, Type::INT8)],
        )
        .await?;
    Ok(match row.get::<_, &str>(0) {
        "asleep" => SleepAttempt::Asleep,
        "writer" => SleepAttempt::WriterInFlight,
        _ => SleepAttempt::AnotherRelaySleeps,
    })
}

/// Lets go of "relay asleep" (held by this session after [`try_to_sleep`] said `Asleep`):
/// writers stop ringing.
pub async fn wake<C: AsClient>(db: &Sql<C>) -> Result<(), StoreError> {
    db.query_typed_one(
        "select pg_advisory_unlock($1)",
        &[(&locks::RELAY_ASLEEP, Type::INT8)],
    )
    .await?;
    Ok(())
}
