//! Every advisory-lock key the system takes, named once. The SQL that takes a key names it
//! by a function of the same name (`lock_key_relay_asleep()`, from db/migrations/0013), and a
//! test checks that both give the same number. Keys share a prefix (`72657669657700`, "review"
//! in ASCII digits) so they do not collide with other applications' keys in one database.

/// Held by whichever migrator runs (`reviews-api migrate`, `scripts/migrate`), so two started
/// at once take turns. Taken before the migrations exist, so it has no SQL function;
/// scripts/migrate spells the number out (a test checks it).
pub const MIGRATIONS: i64 = 7265766965770001;

/// Serialises building the test databases' template across test processes.
pub const TEST_TEMPLATE: i64 = 7265766965770002;

/// Seeds the per-product key under which a product's rating summary is rebuilt
/// (`hashtextextended(product_id::text, key)`): two recomputes of one product take turns.
pub const RATING_RECOMPUTE: i64 = 7265766965770011;

/// "A relay is asleep": a relay holds it exclusively while it waits for the doorbell; a
/// writer that cannot take it shared rings (see db/migrations/0013).
pub const RELAY_ASLEEP: i64 = 7265766965770012;

/// The keys SQL functions name, with the function that names each.
pub const NAMED_IN_SQL: [(&str, i64); 2] = [
    ("lock_key_rating_recompute", RATING_RECOMPUTE),
    ("lock_key_relay_asleep", RELAY_ASLEEP),
];
