//! Parsers for settings read from the command line or the environment, shared by every
//! binary so a duration or a secret is read the same way everywhere.

use std::time::Duration;

use secrecy::SecretString;

/// A duration with its unit (`250ms`, `5s`, `1m`); the error shows examples.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| format!("{e} (examples: 250ms, 5s, 1m)"))
}

/// A secret (a password, a URL that may hold one, a signing key), kept out of `Debug`.
pub fn parse_secret(value: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(value))
}
