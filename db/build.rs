//! `include_dir!` embeds db/migrations at compile time, but Cargo only sees the files it
//! embedded last time: a new migration would leave binaries built before it without it
//! (and a bench or test database migrated by them a migration short). Watching the
//! directory rebuilds this crate whenever a file in it is added or changed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
