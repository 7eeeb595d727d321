//! The relay's side of the doorbell: going to sleep holds the lock "relay asleep" on the
//! listener's connection, so that writers ring; waking lets go of it. The lock lives and
//! dies with that session: when the listener reconnects, the lock is gone with the old one,
//! and the listener rings every bell so the relay looks for itself (db/migrations/0013).

use std::sync::{Arc, Mutex};

use reviews_db::doorbell::{self, SleepAttempt};
use reviews_db::Db;
use tokio_postgres::Client;

/// What the relay may do after trying to sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nap {
    /// It holds the lock: the bell rings for the next writer.
    Asleep,
    /// Another relay holds the lock: the bell rings for both.
    AnotherRelaySleeps,
    /// It cannot sleep yet (a writer in flight, or no listener connection): look again soon.
    KeepLooking,
}

/// A connection and its number (it changes at every reconnect).
type Numbered = (u64, Arc<Client>);

/// The listener's current connection, shared with the relay.
#[derive(Clone, Default)]
pub struct ListenerConnection(Arc<Mutex<Option<Numbered>>>);

impl ListenerConnection {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Numbered>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The listener connected (again).
    pub fn set(&self, generation: u64, client: Arc<Client>) {
        *self.lock() = Some((generation, client));
    }

    /// The listener lost its connection.
    pub fn clear(&self) {
        *self.lock() = None;
    }

    fn current(&self) -> Option<Numbered> {
        self.lock().clone()
    }
}

pub struct Doorbell {
    db: Db,
    connection: ListenerConnection,
    /// The connection (by generation) on which this relay holds the lock, if it does.
    asleep_on: Mutex<Option<u64>>,
}

impl Doorbell {
    pub fn new(db: Db, connection: ListenerConnection) -> Self {
        Doorbell {
            db,
            connection,
            asleep_on: Mutex::new(None),
        }
    }

    /// Tries to go to sleep, never waiting for a writer.
    pub async fn try_to_sleep(&self) -> anyhow::Result<Nap> {
        let Some((generation, client)) = self.connection.current() else {
            return Ok(Nap::KeepLooking);
        };
        let attempt = doorbell::try_to_sleep(&self.db.counted(client)).await?;
        Ok(match attempt {
            SleepAttempt::Asleep => {
                *self.asleep_on.lock().expect("doorbell lock poisoned") = Some(generation);
                Nap::Asleep
            }
            SleepAttempt::AnotherRelaySleeps => Nap::AnotherRelaySleeps,
            SleepAttempt::WriterInFlight => Nap::KeepLooking,
        })
    }

    /// Wakes up: writers stop ringing. Nothing to do when the lock went with an earlier
    /// connection.
    pub async fn wake(&self) -> anyhow::Result<()> {
        let held_on = self
            .asleep_on
            .lock()
            .expect("doorbell lock poisoned")
            .take();
        let Some(held_on) = held_on else {
            return Ok(());
        };
        match self.connection.current() {
            Some((generation, client)) if generation == held_on => {
                doorbell::wake(&self.db.counted(client)).await?;
            }
            _ => {}
        }
        Ok(())
    }
}
