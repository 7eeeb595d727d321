//! Integration tests of the API against a real Postgres: one binary, one module per concern.

mod auth;
mod bad_input;
mod batching;
mod browser;
mod concurrency;
mod deploy;
mod edges;
mod hostile;
mod http;
mod migrations;
mod pagination;
mod pipeline;
mod products;
mod proxy;
mod reviews;
mod security;
mod subscriptions;
mod support;
mod tooling;
mod webhooks;
mod websocket;
