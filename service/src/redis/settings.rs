//! Where Redis is and how to reach it: `REDIS_URL` (or the `REDIS_*` parts), or
//! `REDIS_CLUSTER_NODES` for a cluster; `REDIS_CA_CERT` for a private CA.

use std::path::PathBuf;

use redis::{ConnectionAddr, IntoConnectionInfo, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use secrecy::{ExposeSecret, SecretString};

use crate::settings::parse_secret;

/// Where Redis is. `REDIS_CLUSTER_NODES` wins, then `REDIS_URL`, then the `REDIS_*` parts.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL (redis://[:password@]host:port[/db], rediss:// for TLS); overrides the
    /// REDIS_* parts.
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        value_name = "REDIS_URL",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub redis_url: Option<SecretString>,
    /// Redis host, used when REDIS_URL is not set.
    #[arg(
        long = "redis-host",
        env = "REDIS_HOST",
        value_name = "REDIS_HOST",
        default_value = "127.0.0.1"
    )]
    pub redis_host: String,
    /// Redis port.
    #[arg(
        long = "redis-port",
        env = "REDIS_PORT",
        value_name = "REDIS_PORT",
        default_value_t = 6379
    )]
    pub redis_port: u16,
    /// Redis password (none by default).
    #[arg(
        long = "redis-password",
        env = "REDIS_PASSWORD",
        value_name = "REDIS_PASSWORD",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub redis_password: Option<SecretString>,
    /// A Redis Cluster: some of its nodes, comma-separated (host:port or redis[s]:// URLs);
    /// the rest are found from them. Replaces REDIS_URL.
    #[arg(long = "redis-cluster-nodes", env = "REDIS_CLUSTER_NODES",
          value_name = "REDIS_CLUSTER_NODES", value_parser = parse_seeds, hide_env_values = true)]
    pub redis_cluster_nodes: Option<ClusterSeeds>,
    /// PEM file of the CA that signed Redis's certificate (rediss:// only); without it the
    /// system's trust store is used.
    #[arg(
        long = "redis-ca-cert",
        env = "REDIS_CA_CERT",
        value_name = "REDIS_CA_CERT"
    )]
    pub redis_ca_cert: Option<PathBuf>,
    /// Prefix of every Redis key (the queue's keys share it as a hash tag, so they share a
    /// cluster slot).
    #[arg(long = "redis-prefix", env = "REDIS_PREFIX", value_name = "REDIS_PREFIX", default_value = "reviews",
          value_parser = parse_prefix)]
    pub redis_prefix: String,
}

/// A cluster's seed nodes, as URLs (passwords left out of `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSeeds(pub Vec<String>);

impl std::fmt::Debug for ClusterSeeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|seed| without_password(seed)))
            .finish()
    }
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Server { url, ca } => f
                .debug_struct("Server")
                .field("url", &without_password(url))
                .field("ca", ca)
                .finish(),
            RedisTarget::Cluster { seeds, ca } => f
                .debug_struct("Cluster")
                .field("seeds", &ClusterSeeds(seeds.clone()))
                .field("ca", ca)
                .finish(),
        }
    }
}

/// `url` with the user-info part (where a password goes) replaced by `***`.
fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn parse_seeds(value: &str) -> Result<ClusterSeeds, String> {
    let mut seeds = Vec::new();
    for seed in value.split(',').map(str::trim) {
        let url = if seed.contains("://") {
            seed.to_owned()
        } else {
            format!("redis://{seed}")
        };
        let valid = url.as_str().into_connection_info().ok().filter(|info| {
            matches!(info.addr(), ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. }
                if !host.is_empty() && *port != 0)
        });
        if seed.is_empty() || valid.is_none() {
            return Err(format!(
                "`{seed}` is not a node: give host:port or redis[s]://host:port, comma-separated"
            ));
        }
        seeds.push(url);
    }
    let tls = seeds.iter().filter(|s| s.starts_with("rediss://")).count();
    if tls != 0 && tls != seeds.len() {
        return Err("mixes rediss:// and plain nodes: a cluster is reached one way".into());
    }
    Ok(ClusterSeeds(seeds))
}

fn parse_prefix(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > 64 || value.contains(['{', '}', ' ']) {
        return Err("1 to 64 characters, without braces or spaces".into());
    }
    Ok(value.to_owned())
}

/// Settings that cannot be used, said with the variable to change.
#[derive(Debug, thiserror::Error)]
pub enum RedisConfigError {
    #[error("REDIS_CA_CERT: cannot use {path}: {reason}")]
    CaCert { path: String, reason: String },
    #[error(
        "REDIS_CA_CERT is set but Redis is not reached over TLS: use a rediss:// URL (or \
         rediss:// cluster nodes)"
    )]
    CaCertWithoutTls,
    #[error("REDIS_URL: {0}")]
    Url(String),
}

/// Where to connect, checked: one server or a cluster, and the CA to trust. Its `Debug`
/// leaves out the passwords URLs may hold.
#[derive(Clone)]
pub enum RedisTarget {
    Server {
        url: String,
        ca: Option<CaCert>,
    },
    Cluster {
        seeds: Vec<String>,
        ca: Option<CaCert>,
    },
}

/// A private CA: where it was read from (for messages) and its PEM.
#[derive(Debug, Clone)]
pub struct CaCert {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

impl RedisTarget {
    /// One server at `url`, trusting the system's CAs (tests, tools).
    pub fn server(url: &str) -> Self {
        RedisTarget::Server {
            url: url.to_owned(),
            ca: None,
        }
    }

    pub(crate) fn ca(&self) -> Option<&CaCert> {
        match self {
            RedisTarget::Server { ca, .. } | RedisTarget::Cluster { ca, .. } => ca.as_ref(),
        }
    }

    /// The CA certificates as the redis crate takes them.
    pub(crate) fn certificates(&self) -> Option<TlsCertificates> {
        self.ca().map(|ca| TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.pem.clone()),
        })
    }

    /// Whom a server's certificate must be signed by, for messages.
    pub(crate) fn trusted(&self) -> String {
        match self.ca() {
            Some(ca) => format!("the CA in {} (REDIS_CA_CERT)", ca.path.display()),
            None => "a CA of the system's trust store (REDIS_CA_CERT names a private one)".into(),
        }
    }
}

impl RedisArgs {
    pub fn local(prefix: &str) -> Self {
        RedisArgs {
            redis_url: None,
            redis_host: "127.0.0.1".into(),
            redis_port: 6379,
            redis_password: None,
            redis_cluster_nodes: None,
            redis_ca_cert: None,
            redis_prefix: prefix.into(),
        }
    }

    /// Whether Redis was named at all (REDIS_URL or REDIS_CLUSTER_NODES): the API uses Redis
    /// only then.
    pub fn named(&self) -> bool {
        self.redis_url.is_some() || self.redis_cluster_nodes.is_some()
    }

    /// The URL of the one server these settings describe (ignoring a cluster).
    pub fn url(&self) -> String {
        if let Some(url) = &self.redis_url {
            return url.expose_secret().to_owned();
        }
        let auth = match &self.redis_password {
            Some(password) => format!(":{}@", percent_encode(password.expose_secret())),
            None => String::new(),
        };
        format!("redis://{auth}{}:{}", self.redis_host, self.redis_port)
    }

    /// The target, with the CA file read and checked: a wrong path or a file without
    /// certificates stops start-up here, not at the first connection.
    pub fn target(&self) -> Result<RedisTarget, RedisConfigError> {
        let ca = match &self.redis_ca_cert {
            Some(path) => Some(read_ca(path)?),
            None => None,
        };
        if let Some(seeds) = &self.redis_cluster_nodes {
            if ca.is_some() && !seeds.0.iter().all(|s| s.starts_with("rediss://")) {
                return Err(RedisConfigError::CaCertWithoutTls);
            }
            return Ok(RedisTarget::Cluster {
                seeds: seeds.0.clone(),
                ca,
            });
        }
        let url = self.url();
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| RedisConfigError::Url(format!("not a Redis URL ({e})")))?;
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        if ca.is_some() && !tls {
            return Err(RedisConfigError::CaCertWithoutTls);
        }
        Ok(RedisTarget::Server { url, ca })
    }
}

fn read_ca(path: &std::path::Path) -> Result<CaCert, RedisConfigError> {
    let unusable = |reason: String| RedisConfigError::CaCert {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| unusable(e.to_string()))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(format!("not PEM certificates ({e})")))?;
    if certificates.is_empty() {
        return Err(unusable("no PEM certificate in it".into()));
    }
    Ok(CaCert {
        path: path.to_owned(),
        pem,
    })
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_print() {
        let mut args = RedisArgs::local("p");
        args.redis_password = Some("hunter2-part".into());
        args.redis_url = Some("redis://:hunter2-url@127.0.0.1:6379".into());
        args.redis_cluster_nodes = Some(parse_seeds("redis://u:hunter2-seed@a:1").unwrap());
        let printed = format!("{args:?}");
        for secret in ["hunter2-part", "hunter2-url", "hunter2-seed"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(printed.contains("redis://***@a:1"), "{printed}");
        let server = format!("{:?}", RedisTarget::server("rediss://:pw-x@h:1"));
        assert!(
            !server.contains("pw-x") && server.contains("rediss://***@h:1"),
            "{server}"
        );
        let cluster = args.target().unwrap();
        assert!(!format!("{cluster:?}").contains("hunter2"), "{cluster:?}");
    }

    #[test]
    fn seeds_take_host_port_or_urls_and_refuse_the_malformed_naming_them() {
        assert_eq!(
            parse_seeds("127.0.0.1:7000, redis://10.0.0.2:7001").unwrap(),
            ClusterSeeds(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://10.0.0.2:7001".into()
            ])
        );
        for bad in [
            "",
            "127.0.0.1:7000,,127.0.0.1:7001",
            "127.0.0.1:notaport",
            "http://x:1",
        ] {
            assert!(parse_seeds(bad).is_err(), "{bad:?} refused");
        }
        let mixed = parse_seeds("rediss://a:1,redis://b:2").unwrap_err();
        assert!(mixed.contains("mixes"), "{mixed}");
    }

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_certificate_is_refused_with_its_variable() {
        let mut args = RedisArgs::local("p");
        args.redis_url = Some("rediss://127.0.0.1:6390".into());
        args.redis_ca_cert = Some("/nonexistent/ca.pem".into());
        let error = args.target().unwrap_err().to_string();
        assert!(
            error.starts_with("REDIS_CA_CERT: cannot use /nonexistent/ca.pem"),
            "{error}"
        );
        let empty = std::env::temp_dir().join(format!("redis-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "hello\n").unwrap();
        args.redis_ca_cert = Some(empty.clone());
        let error = args.target().unwrap_err().to_string();
        std::fs::remove_file(&empty).unwrap();
        assert!(error.contains("no PEM certificate"), "{error}");
    }

    #[test]
    fn a_ca_without_tls_is_refused() {
        let pem = std::env::temp_dir().join(format!("redis-ca-ok-{}.pem", std::process::id()));
        // Any well-formed PEM certificate block passes the start-up check.
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let mut args = RedisArgs::local("p");
        args.redis_ca_cert = Some(pem.clone());
        let error = args.target().unwrap_err();
        std::fs::remove_file(&pem).unwrap();
        assert!(
            matches!(error, RedisConfigError::CaCertWithoutTls),
            "{error}"
        );
    }
}
