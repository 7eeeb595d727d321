//! Servers the deployment tests start from the system's binaries, each on loopback ports
//! with a directory of its own, each stopped by its process id when dropped: a CA made with
//! openssl, a Postgres and a Redis with its certificates, a six-node Redis Cluster,
//! PgBouncer in transaction mode.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A directory of a test's own under the system's temporary directory, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("reviews-{what}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A certificate authority made with openssl, and the certificates it issues.
pub struct TestCa {
    dir: PathBuf,
    name: String,
}

impl TestCa {
    /// A new CA (an EC key and a self-signed CA certificate) named `name` in `scratch`.
    pub fn new(scratch: &Scratch, name: &str) -> Self {
        let ca = TestCa {
            dir: scratch.0.clone(),
            name: name.to_owned(),
        };
        run(
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                ])
                .args(["-nodes", "-days", "1", "-subj"])
                .arg(format!("/CN=reviews test CA {name}"))
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .arg("-keyout")
                .arg(ca.key())
                .arg("-out")
                .arg(ca.cert()),
            "openssl making a CA (apt-get install openssl)",
        );
        ca
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    fn key(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.key", self.name))
    }

    /// A server certificate signed by this CA, valid for `names` (a subjectAltName value,
    /// e.g. "DNS:localhost,IP:127.0.0.1"): (cert, key).
    pub fn issue_server(&self, server: &str, names: &str) -> (PathBuf, PathBuf) {
        let cert = self.dir.join(format!("{server}.pem"));
        let key = self.dir.join(format!("{server}.key"));
        let csr = self.dir.join(format!("{server}.csr"));
        let extensions = self.dir.join(format!("{server}.ext"));
        std::fs::write(
            &extensions,
            format!("subjectAltName={names}\nextendedKeyUsage=serverAuth\n"),
        )
        .unwrap();
        run(
            Command::new("openssl")
                .args([
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                ])
                .args(["-nodes", "-subj", "/CN=localhost", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&csr),
            "openssl making a server key",
        );
        run(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "1", "-CAcreateserial", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(self.cert())
                .arg("-CAkey")
                .arg(self.key())
                .arg("-extfile")
                .arg(&extensions)
                .arg("-out")
                .arg(&cert),
            "openssl signing a server certificate",
        );
        (cert, key)
    }
}

/// Ports nobody listens on right now: `count` consecutive ones starting at the returned
/// port, each with its `+ offset` twin free too (a cluster node's bus port). Below 32768,
/// twins included: outgoing connections take their local ports from above, and a port one
/// of them holds cannot be listened on.
pub fn free_ports(count: u16, offset: u16) -> u16 {
    for _ in 0..200 {
        let first = 10_000 + (rand_port() % 12_000);
        let free = (0..count).all(|i| {
            [first + i, first + i + offset]
                .iter()
                .all(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        });
        if free {
            return first;
        }
    }
    panic!("no free ports");
}

fn rand_port() -> u16 {
    (uuid::Uuid::new_v4().as_u128() % 65_536) as u16
}

/// Waits until `port` on loopback accepts connections.
async fn wait_for_port(port: u16, what: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} did not listen on port {port}");
}

/// A process killed by its process id when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A redis-server that accepts only TLS, with a certificate from `ca`.
pub struct TlsRedis {
    pub port: u16,
    _process: Killed,
}

impl TlsRedis {
    pub async fn start(ca: &TestCa, scratch: &Scratch) -> Self {
        let (cert, key) = ca.issue_server("redis", "DNS:localhost,IP:127.0.0.1");
        let port = free_ports(1, 0);
        let process = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(ca.cert())
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&scratch.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        let process = Killed(process);
        wait_for_port(port, "the TLS redis-server").await;
        TlsRedis {
            port,
            _process: process,
        }
    }
}

/// A Postgres server of the test's own (initdb from the system's server binaries), with TLS
/// on and a certificate from `ca` valid for `localhost` only, trust authentication for
/// `postgres`. Its own rather than the shared test server: that one's certificate is whatever
/// the machine made (Debian's names the host), so no test could know which names it covers.
pub struct TlsPostgres {
    pub port: u16,
    process: Child,
    _scratch: Scratch,
}

impl TlsPostgres {
    pub async fn start(ca: &TestCa) -> Self {
        let scratch = Scratch::new("pg-tls-server");
        let (cert, key) = ca.issue_server("postgres", "DNS:localhost");
        // Postgres refuses a key that others may read.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let data = scratch.path("data");
        // initdb and postgres refuse to run as root: as root, both run as `postgres`.
        let owner = running_as_root().then(|| {
            run(
                Command::new("chown")
                    .arg("-R")
                    .arg("postgres")
                    .arg(&scratch.0)
                    .arg(&cert)
                    .arg(&key),
                "chown the Postgres directory",
            );
            let id = |flag: &str| -> u32 {
                let output = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&output.stdout)
                    .trim()
                    .parse()
                    .unwrap()
            };
            (id("-u"), id("-g"))
        });
        let as_owner = |command: &mut Command| {
            use std::os::unix::process::CommandExt;
            if let Some((uid, gid)) = owner {
                command.uid(uid).gid(gid);
            }
        };
        let mut initdb = Command::new(pg_bin("initdb"));
        initdb.arg("--pgdata").arg(&data).args([
            "--username=postgres",
            "--auth=trust",
            "--no-sync",
        ]);
        as_owner(&mut initdb);
        run(&mut initdb, "initdb (apt-get install postgresql)");
        let port = free_ports(1, 0);
        let mut postgres = Command::new(pg_bin("postgres"));
        postgres
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&data)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "ssl=on",
                "-c",
                "fsync=off",
            ])
            .arg("-c")
            .arg(format!("ssl_cert_file={}", cert.display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", key.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_owner(&mut postgres);
        // Held before waiting, so a server that never comes up is stopped all the same.
        let server = TlsPostgres {
            port,
            process: postgres.spawn().unwrap(),
            _scratch: scratch,
        };
        // Ready when it accepts a session: it listens before its start-up has finished.
        let target = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
        for _ in 0..200 {
            if tokio_postgres::connect(&target, tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the TLS Postgres did not accept a session on port {port}");
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        // Immediate shutdown by the postmaster's process id: its backends go with it.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.process.id().to_string()])
            .status();
        let _ = self.process.wait();
    }
}

/// A Postgres server binary: Debian's newest under /usr/lib/postgresql, else the PATH's.
fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin").join(name))
        .filter(|path| path.exists())
        .collect();
    versions.sort_by_key(|path| {
        path.components()
            .nth(4)
            .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
    });
    versions.pop().unwrap_or_else(|| PathBuf::from(name))
}

/// Six redis-server processes in a cluster (scripts/lib/redis-cluster), stopped by their
/// process ids when dropped.
pub struct RedisCluster {
    scratch: Scratch,
    pub seeds: Vec<String>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let scratch = Scratch::new("redis-cluster");
        let first = free_ports(6, 10_000);
        let output = Command::new(repo().join("scripts/lib/redis-cluster"))
            .arg("start")
            .arg(&scratch.0)
            .arg(first.to_string())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "starting the cluster: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let seeds = String::from_utf8(output.stdout)
            .unwrap()
            .trim()
            .split(',')
            .map(str::to_owned)
            .collect();
        RedisCluster { scratch, seeds }
    }

    /// A primary that does not own `key`'s slot: a client pointed there is answered MOVED.
    pub async fn node_not_owning(&self, key: &str) -> String {
        non_owner(&self.seeds, key).await
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/lib/redis-cluster"))
            .arg("stop")
            .arg(&self.scratch.0)
            .status();
    }
}

/// Of a cluster's nodes, a primary that does not own `key`'s slot.
pub async fn non_owner(seeds: &[String], key: &str) -> String {
    use reviews_service::redis::topology;
    let (slot, nodes) = topology::slot_map(&seeds[0], key).await.unwrap();
    topology::primary_elsewhere(&nodes, slot)
        .unwrap_or_else(|| panic!("no primary without slot {slot}"))
        .addr
        .clone()
}

/// PgBouncer in transaction mode in front of the test Postgres (trust authentication, as the
/// test server), switching to the `postgres` user when the tests run as root.
pub struct PgBouncer {
    pub port: u16,
    _process: Killed,
    _scratch: Scratch,
}

impl PgBouncer {
    pub async fn start(server: &tokio_postgres::Config) -> Self {
        let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .expect(
                "pgbouncer must be installed (scripts/test installs it: apt-get install pgbouncer)",
            );
        let scratch = Scratch::new("pgbouncer");
        let port = free_ports(1, 0);
        let (host, server_port) = match (server.get_hosts().first(), server.get_ports().first()) {
            (Some(tokio_postgres::config::Host::Tcp(host)), Some(port)) => (host.clone(), *port),
            _ => ("127.0.0.1".into(), 5432),
        };
        let user = server.get_user().unwrap_or("postgres").to_owned();
        std::fs::write(scratch.path("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        std::fs::write(
            scratch.path("pgbouncer.ini"),
            format!(
                "[databases]\n* = host={host} port={server_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
                 max_client_conn = 500\ndefault_pool_size = 8\nlogfile = {log}\n\
                 ignore_startup_parameters = extra_float_digits\nserver_login_retry = 1\n",
                users = scratch.path("users.txt").display(),
                log = scratch.path("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        let mut command = Command::new(binary);
        if running_as_root() {
            // PgBouncer refuses to run as root; -u makes it switch user itself, so the
            // process id is PgBouncer's own.
            run(
                Command::new("chown")
                    .arg("-R")
                    .arg("postgres")
                    .arg(&scratch.0),
                "chown the pgbouncer directory",
            );
            command.args(["-u", "postgres"]);
        }
        let process = command
            .arg(scratch.path("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let process = Killed(process);
        wait_for_port(port, "pgbouncer").await;
        PgBouncer {
            port,
            _process: process,
            _scratch: scratch,
        }
    }

    /// `server`'s settings, through this pooler.
    pub fn config(&self, server: &tokio_postgres::Config) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(self.port);
        if let Some(user) = server.get_user() {
            config.user(user);
        }
        if let Some(dbname) = server.get_dbname() {
            config.dbname(dbname);
        }
        if let Some(password) = server.get_password() {
            config.password(password);
        }
        config
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
