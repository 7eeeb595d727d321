//! Pipeline tests against a real Postgres and Redis: capture, relay, queue, runner, retries,
//! and the faults the worker must survive.

mod capture;
mod doorbell;
mod effects;
mod faults;
mod flow;
mod hand_off;
mod kinds;
mod metrics;
mod plans;
mod retries;
mod schema;
mod settings;
mod support;
mod webhooks;
