//! Settings: defaults, the command line, the TOML file, and their checks.
//!
//! Every setting has one name, used both as `--flag` and as TOML key.
//! Precedence: built-in default < `--config` file < command line.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::peer::{Cidr, Credential};
use crate::store::{Fsync, RedisAddr, StoreLimits};

/// Where a listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address such as `127.0.0.1:8420`.
    Tcp(SocketAddr),
    /// A Unix stream socket path (`unix:/run/mailboxd/http.sock`).
    Unix(PathBuf),
}

impl ListenAddr {
    /// Parses `HOST:PORT` or `unix:PATH`.
    pub fn parse(s: &str) -> Result<ListenAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("'{s}' is neither HOST:PORT (e.g. 127.0.0.1:8420) nor unix:PATH"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The HTTP listener used when none is configured.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8420";

/// The file name of the control socket in its default directory.
const CONTROL_NAME: &str = "control.sock";

/// The directory of the default control socket (also `mailboxctl`'s): one
/// that only this user can write, so no other local user can create the
/// path first and receive the backends' messages (as anyone can in `/tmp`).
/// `/run/mailboxd` for root; else `$XDG_RUNTIME_DIR/mailboxd` (the user's
/// private runtime directory); else `~/.mailboxd`.
pub fn default_control_dir() -> PathBuf {
    if crate::peer::own_uid() == 0 {
        return PathBuf::from("/run/mailboxd");
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("mailboxd");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".mailboxd")
}

/// The default control socket path.
pub fn default_control() -> PathBuf {
    default_control_dir().join(CONTROL_NAME)
}

/// Parses a `--control` value: a Unix socket path, never an address.
pub fn control_path(s: &str) -> Result<PathBuf, String> {
    let path = s.strip_prefix("unix:").unwrap_or(s);
    let looks_tcp = s.parse::<SocketAddr>().is_ok()
        || s.rsplit_once(':').is_some_and(|(host, port)| {
            !host.contains('/') && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
        });
    if looks_tcp && !s.starts_with("unix:") {
        return Err(format!(
            "--control '{s}' looks like a TCP address; the control protocol has no \
             authentication and is only served on a Unix socket: give a path"
        ));
    }
    if path.is_empty() {
        return Err("--control needs a path".into());
    }
    Ok(PathBuf::from(path))
}

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listeners.
    pub http: Vec<ListenAddr>,
    /// FastCGI listeners.
    pub fastcgi: Vec<ListenAddr>,
    /// SCGI listeners.
    pub scgi: Vec<ListenAddr>,
    /// Control socket path.
    pub control: PathBuf,
    /// Whether `control` is the default (its directory is then created
    /// and checked by mailboxd).
    pub control_is_default: bool,
    /// Permissions of the control socket, whatever the umask.
    pub control_mode: u32,
    /// Users and groups besides our own that may use the control socket
    /// (empty: anyone `control_mode` lets connect).
    pub control_allow: Vec<Credential>,
    /// Peers allowed on FastCGI and SCGI TCP listeners.
    pub gateway_allow: Vec<Cidr>,
    /// Where Prometheus fetches `/metrics`; `None`: no metrics listener.
    pub metrics: Option<ListenAddr>,
    /// Peers allowed on the metrics listener.
    pub metrics_allow: Vec<Cidr>,
    /// The file holding the token-signing secret; `None` runs open.
    pub secret_file: Option<PathBuf>,
    /// Bytes all retained messages together may cost.
    pub max_memory: usize,
    /// How long unacknowledged data or keep-alive probes may go unanswered
    /// before a client TCP connection is declared dead.
    pub dead_peer_timeout: Duration,
    /// Whether TCP client listeners set `SO_REUSEPORT`, so that several
    /// instances on one host share a port and the kernel spreads clients.
    pub reuse_port: bool,
    /// Where the journal and snapshots live; `None` keeps everything in memory.
    pub state_dir: Option<PathBuf>,
    /// The Redis shared by several instances; `None`: this process's own store.
    pub store: Option<RedisAddr>,
    /// When the journal is synced to disk.
    pub fsync: Fsync,
    /// Journal bytes past which a snapshot is taken.
    pub compact_after: u64,
    /// Messages retained per mailbox.
    pub retain: usize,
    /// Payload bytes retained per mailbox.
    pub retain_bytes: usize,
    /// Concurrent requests per mailbox.
    pub max_subscribers: usize,
    /// Idle time after which a mailbox expires.
    pub mailbox_ttl: Duration,
    /// Interval between keep-alives on streams; below nginx's 60 s read timeout.
    pub heartbeat: Duration,
    /// How long a long-poll is held before an empty answer.
    pub poll_timeout: Duration,
    /// Largest payload a backend may deliver.
    pub max_message: usize,
    /// Output queued for one client before it is disconnected as too slow.
    pub max_output: usize,
    /// Client connections held at once; more are answered 503.
    pub max_connections: usize,
    /// Mailboxes in the store.
    pub max_mailboxes: usize,
    /// Groups in the store.
    pub max_groups: usize,
    /// Time a client has to send its request head (slow-loris guard).
    pub request_timeout: Duration,
    /// SSE `retry:` hint sent to browsers, in milliseconds.
    pub retry_ms: u64,
    /// Permissions given to every Unix socket mailboxd creates (`None`: umask).
    pub socket_mode: Option<u32>,
    /// Where the running process writes its pid (a successor after an
    /// upgrade writes its own); `None`: nowhere.
    pub pid_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            http: vec![ListenAddr::parse(DEFAULT_HTTP).expect("valid default")],
            fastcgi: Vec::new(),
            scgi: Vec::new(),
            control: default_control(),
            control_is_default: true,
            control_mode: 0o600,
            control_allow: Vec::new(),
            gateway_allow: crate::peer::loopback(),
            metrics: None,
            metrics_allow: crate::peer::loopback(),
            secret_file: None,
            // Enough for 100 messages of 1 KiB in each of 10,000 mailboxes;
            // past it the oldest retained messages go first, server-wide.
            max_memory: 1 << 30,
            // With the 20 s heartbeat a vanished peer is gone within a minute.
            dead_peer_timeout: Duration::from_secs(30),
            reuse_port: false,
            state_dir: None,
            store: None,
            fsync: Fsync::Always,
            // Large enough that compaction is rare under steady load, small
            // enough that replaying the journal at start takes well under a second.
            compact_after: 64 << 20,
            retain: 100,
            retain_bytes: 1 << 20,
            max_subscribers: 16,
            mailbox_ttl: Duration::from_secs(300),
            heartbeat: Duration::from_secs(20),
            poll_timeout: Duration::from_secs(30),
            max_message: 64 << 10,
            max_output: 1 << 20,
            max_connections: 10_000,
            max_mailboxes: 1_000_000,
            max_groups: 100_000,
            request_timeout: Duration::from_secs(10),
            retry_ms: 2000,
            socket_mode: None,
            pid_file: None,
        }
    }
}

impl Config {
    /// The store's share of the settings.
    pub fn store_limits(&self) -> StoreLimits {
        StoreLimits {
            retain: self.retain,
            retain_bytes: self.retain_bytes,
            mailbox_ttl: self.mailbox_ttl,
            max_mailboxes: self.max_mailboxes,
            max_groups: self.max_groups,
            max_memory: self.max_memory,
        }
    }

    /// Checks relations between settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.store.is_some() && self.state_dir.is_some() {
            return Err(
                "--store redis://… and --state-dir exclude each other: Redis keeps the state"
                    .into(),
            );
        }
        let positive = [
            ("retain", self.retain as u128),
            ("max-subscribers", self.max_subscribers as u128),
            ("max-message", self.max_message as u128),
            ("max-connections", self.max_connections as u128),
            ("max-mailboxes", self.max_mailboxes as u128),
            ("max-groups", self.max_groups as u128),
            ("heartbeat", self.heartbeat.as_millis()),
            ("poll-timeout", self.poll_timeout.as_millis()),
            ("mailbox-ttl", self.mailbox_ttl.as_millis()),
            ("request-timeout", self.request_timeout.as_millis()),
            ("dead-peer-timeout", self.dead_peer_timeout.as_millis()),
            ("max-memory", self.max_memory as u128),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be greater than 0"));
        }
        if self.retain_bytes < self.max_message {
            return Err(
                "retain-bytes must be at least max-message, or a message could never be retained"
                    .into(),
            );
        }
        if self.max_memory < self.retain_bytes {
            return Err("max-memory must be at least retain-bytes".into());
        }
        if self.max_output < self.max_message + 64 {
            return Err(
                "max-output must exceed max-message, or one message would overflow it".into(),
            );
        }
        if self.dead_peer_timeout < Duration::from_secs(1) {
            return Err("dead-peer-timeout must be at least 1 second".into());
        }
        if self.max_subscribers > 0xffff {
            return Err("max-subscribers must be at most 65535".into());
        }
        if self.http.is_empty() && self.fastcgi.is_empty() && self.scgi.is_empty() {
            return Err(
                "at least one client listener (--http, --fastcgi or --scgi) is needed".into(),
            );
        }
        Ok(())
    }
}

/// The same settings, all optional, as read from TOML or the command line.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Settings {
    http: Option<Vec<String>>,
    fastcgi: Option<Vec<String>>,
    scgi: Option<Vec<String>>,
    control: Option<String>,
    control_mode: Option<String>,
    control_allow: Option<Vec<String>>,
    gateway_allow: Option<Vec<String>>,
    metrics: Option<String>,
    metrics_allow: Option<Vec<String>>,
    secret_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    store: Option<String>,
    reuse_port: Option<bool>,
    fsync: Option<String>,
    compact_after: Option<u64>,
    max_memory: Option<usize>,
    dead_peer_timeout: Option<f64>,
    retain: Option<usize>,
    retain_bytes: Option<usize>,
    max_subscribers: Option<usize>,
    mailbox_ttl: Option<f64>,
    heartbeat: Option<f64>,
    poll_timeout: Option<f64>,
    max_message: Option<usize>,
    max_output: Option<usize>,
    max_connections: Option<usize>,
    max_mailboxes: Option<usize>,
    max_groups: Option<usize>,
    request_timeout: Option<f64>,
    retry_ms: Option<u64>,
    socket_mode: Option<String>,
    pid_file: Option<PathBuf>,
}

impl Settings {
    fn apply(self, config: &mut Config) -> Result<(), String> {
        let parse = |list: Option<Vec<String>>| {
            list.unwrap_or_default()
                .iter()
                .map(|s| ListenAddr::parse(s))
                .collect::<Result<Vec<_>, _>>()
        };
        // The default HTTP listener stands in only when no client listener is configured.
        if self.http.is_some() || self.fastcgi.is_some() || self.scgi.is_some() {
            config.http = parse(self.http)?;
            config.fastcgi = parse(self.fastcgi)?;
            config.scgi = parse(self.scgi)?;
        }
        if let Some(mode) = &self.socket_mode {
            config.socket_mode = Some(octal_mode(mode, "socket-mode")?);
        }
        if let Some(mode) = &self.control_mode {
            config.control_mode = octal_mode(mode, "control-mode")?;
        }
        if let Some(control) = &self.control {
            config.control = control_path(control)?;
            config.control_is_default = false;
        }
        if let Some(list) = &self.control_allow {
            config.control_allow = list
                .iter()
                .map(|s| Credential::parse(s).map_err(|e| format!("control-allow: {e}")))
                .collect::<Result<_, _>>()?;
        }
        if let Some(addr) = &self.metrics {
            match ListenAddr::parse(addr)? {
                a @ ListenAddr::Tcp(_) => config.metrics = Some(a),
                ListenAddr::Unix(_) => {
                    return Err(format!(
                        "metrics: '{addr}' must be HOST:PORT (Prometheus scrapes TCP)"
                    ));
                }
            }
        }
        if let Some(list) = &self.metrics_allow {
            config.metrics_allow = list
                .iter()
                .map(|s| Cidr::parse(s).map_err(|e| format!("metrics-allow: {e}")))
                .collect::<Result<_, _>>()?;
        }
        if let Some(list) = &self.gateway_allow {
            config.gateway_allow = list
                .iter()
                .map(|s| Cidr::parse(s).map_err(|e| format!("gateway-allow: {e}")))
                .collect::<Result<_, _>>()?;
        }
        if self.secret_file.is_some() {
            config.secret_file = self.secret_file;
        }
        if self.pid_file.is_some() {
            config.pid_file = self.pid_file;
        }
        if self.state_dir.is_some() {
            config.state_dir = self.state_dir;
        }
        match self.store.as_deref() {
            None => {}
            Some("memory") => config.store = None,
            Some(url) => config.store = Some(RedisAddr::parse(url)?),
        }
        if let Some(reuse) = self.reuse_port {
            config.reuse_port = reuse;
        }
        if let Some(fsync) = &self.fsync {
            config.fsync = Fsync::parse(fsync)?;
        }
        if let Some(bytes) = self.compact_after {
            config.compact_after = bytes;
        }
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { config.$field = v; } )* };
        }
        set!(
            max_memory,
            retain,
            retain_bytes,
            max_subscribers,
            max_message,
            max_output,
            max_connections,
            max_mailboxes,
            max_groups,
            retry_ms
        );
        for (value, slot, name) in [
            (self.mailbox_ttl, &mut config.mailbox_ttl, "mailbox-ttl"),
            (self.heartbeat, &mut config.heartbeat, "heartbeat"),
            (self.poll_timeout, &mut config.poll_timeout, "poll-timeout"),
            (
                self.request_timeout,
                &mut config.request_timeout,
                "request-timeout",
            ),
            (
                self.dead_peer_timeout,
                &mut config.dead_peer_timeout,
                "dead-peer-timeout",
            ),
        ] {
            if let Some(secs) = value {
                *slot = seconds(secs, name)?;
            }
        }
        Ok(())
    }
}

fn octal_mode(mode: &str, name: &str) -> Result<u32, String> {
    u32::from_str_radix(mode, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{name} '{mode}' is not an octal mode like 0660"))
}

fn seconds(value: f64, name: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| format!("{name} must be a number of seconds >= 0"))
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    /// Run the server.
    Run(Box<Config>),
    /// Print help and exit.
    Help,
    /// Print the version and exit.
    Version,
}

/// The `-h` text.
pub const HELP: &str = "\
mailboxd: a COMET sidecar. Clients park on named mailboxes over HTTP;
backends deliver to mailboxes and groups through a Unix control socket.

Usage: mailboxd [OPTIONS]

Listeners:
  --http ADDR              HTTP listener, HOST:PORT or unix:PATH; repeatable
                           [default: 127.0.0.1:8420, when no listener is given]
  --fastcgi ADDR           FastCGI listener (for fastcgi_pass / mod_fastcgi); repeatable
  --scgi ADDR              SCGI listener (for scgi_pass / mod_scgi); repeatable
  --control PATH           control socket (a path: the control protocol is never on TCP)
                           [default: /run/mailboxd/control.sock for root, else
                           $XDG_RUNTIME_DIR/mailboxd/control.sock]
  --control-mode MODE      permissions of the control socket, whatever the umask
                           [default: 0600]
  --control-allow LIST     users/groups besides mailboxd's own that may use the control
                           socket: uid:N, gid:N, user:NAME, group:NAME; comma-separated,
                           repeatable [default: whoever control-mode lets in]
  --socket-mode MODE       permissions of the gateway Unix sockets created, e.g. 0660 so
                           that the web server's group can connect [default: from umask]
  --gateway-allow LIST     address blocks allowed on FastCGI/SCGI TCP listeners,
                           comma-separated, repeatable [default: 127.0.0.0/8,::1/128]
  --reuse-port             let several mailboxd processes on this host listen on the same
                           TCP ports (SO_REUSEPORT); the kernel spreads connections
  --config FILE            read settings from a TOML file (keys = flag names);
                           flags given on the command line win

Mailboxes:
  --retain N               messages kept per mailbox [default: 100]
  --retain-bytes N         payload bytes kept per mailbox [default: 1048576]
  --mailbox-ttl SECS       a mailbox with no subscriber expires after this [default: 300]
  --max-subscribers N      concurrent requests per mailbox; more get 429 [default: 16]
  --max-mailboxes N        mailboxes in total [default: 1000000]
  --max-groups N           groups in total [default: 100000]
  --max-message N          largest payload in bytes [default: 65536]
  --max-memory N           bytes all retained messages may cost together; past it the
                           oldest go first, server-wide [default: 1073741824]

Clients:
  --heartbeat SECS         keep-alive interval on streams [default: 20]
  --poll-timeout SECS      how long a long-poll is held [default: 30]
  --max-output N           bytes queued for one client before it is dropped as
                           too slow (it resumes from retained messages) [default: 1048576]
  --max-connections N      client connections at once; more get 503 [default: 10000]
  --request-timeout SECS   time allowed to send a request head [default: 10]
  --retry-ms N             SSE reconnect hint for browsers [default: 2000]
  --dead-peer-timeout SECS a client that stops acknowledging for this long is dropped
                           (TCP_USER_TIMEOUT, keep-alive probes) [default: 30]

Durability:
  --state-dir DIR          keep mailboxes, retained messages, groups, expiry and ids in
                           DIR (journal and snapshots), across restarts and kill -9
                           [default: none: everything in memory]
  --fsync MODE             always (a backend's OK only once its record is on disk; one
                           sync per loop turn covers the turn), everysec, or never
                           [default: always]
  --compact-after BYTES    journal size past which a snapshot is written by a forked
                           child [default: 67108864]

Monitoring:
  --metrics HOST:PORT      serve Prometheus metrics on http://HOST:PORT/metrics
                           [default: none]
  --metrics-allow LIST     address blocks allowed to fetch metrics, comma-separated,
                           repeatable [default: 127.0.0.0/8,::1/128]

Several instances:
  --store URL              keep mailboxes, groups, retained messages, ids and expiry in
                           Redis (7 or later), shared by every instance naming it:
                           redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or unix:PATH[?db=N]
                           [default: memory: this process's own, with --state-dir]

Security:
  --secret-file FILE       HMAC-SHA256 key for mailbox tokens; clients then need a
                           token (?token= or Authorization: Bearer) to open a mailbox.
                           The file must not be readable by group or others.
                           [default: none: any client may open any mailbox]

Process:
  --pid-file FILE          write the pid here (rewritten by the new process after an
                           upgrade) [default: none]

  -h, --help               print this help
  -V, --version            print the version

Signals: SIGTERM/SIGINT stop cleanly; SIGHUP re-reads the secret file; SIGUSR2
upgrades: the binary at the same path is started and takes over every listener
and connection, or this process keeps serving if it fails (docs/upgrade.md).
Logging: RUST_LOG=debug (or info, warn, ...); default info.
";

/// Parses the command line (without the program name).
pub fn parse_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Command, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut cli = Settings::default();
    let mut config_file = None;
    let (mut http, mut fastcgi, mut scgi) = (Vec::new(), Vec::new(), Vec::new());
    let err = |e: lexopt::Error| e.to_string();
    while let Some(arg) = parser.next().map_err(err)? {
        let Long(name) = arg else {
            match arg {
                Short('h') => return Ok(Command::Help),
                Short('V') => return Ok(Command::Version),
                _ => return Err(arg.unexpected().to_string()),
            }
        };
        let name = name.to_string();
        if name == "help" {
            return Ok(Command::Help);
        }
        if name == "version" {
            return Ok(Command::Version);
        }
        if name == "reuse-port" {
            cli.reuse_port = Some(true);
            continue;
        }
        let value: String = parser.value().map_err(err)?.string().map_err(err)?;
        let int = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("--{name}: '{v}' is not a whole number"))
        };
        let secs = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("--{name}: '{v}' is not a number of seconds"))
        };
        match name.as_str() {
            "http" => http.push(value),
            "fastcgi" => fastcgi.push(value),
            "scgi" => scgi.push(value),
            "control" => cli.control = Some(value),
            "control-mode" => cli.control_mode = Some(value),
            "control-allow" => cli
                .control_allow
                .get_or_insert_with(Vec::new)
                .extend(value.split(',').map(str::to_string)),
            "metrics" => cli.metrics = Some(value),
            "metrics-allow" => cli
                .metrics_allow
                .get_or_insert_with(Vec::new)
                .extend(value.split(',').map(str::to_string)),
            "gateway-allow" => cli
                .gateway_allow
                .get_or_insert_with(Vec::new)
                .extend(value.split(',').map(str::to_string)),
            "secret-file" => cli.secret_file = Some(PathBuf::from(value)),
            "pid-file" => cli.pid_file = Some(PathBuf::from(value)),
            "state-dir" => cli.state_dir = Some(PathBuf::from(value)),
            "store" => cli.store = Some(value),
            "fsync" => cli.fsync = Some(value),
            "compact-after" => cli.compact_after = Some(int(&value)? as u64),
            "max-memory" => cli.max_memory = Some(int(&value)?),
            "dead-peer-timeout" => cli.dead_peer_timeout = Some(secs(&value)?),
            "config" => config_file = Some(PathBuf::from(value)),
            "retain" => cli.retain = Some(int(&value)?),
            "retain-bytes" => cli.retain_bytes = Some(int(&value)?),
            "max-subscribers" => cli.max_subscribers = Some(int(&value)?),
            "max-mailboxes" => cli.max_mailboxes = Some(int(&value)?),
            "max-groups" => cli.max_groups = Some(int(&value)?),
            "max-message" => cli.max_message = Some(int(&value)?),
            "max-output" => cli.max_output = Some(int(&value)?),
            "max-connections" => cli.max_connections = Some(int(&value)?),
            "socket-mode" => cli.socket_mode = Some(value),
            "retry-ms" => cli.retry_ms = Some(int(&value)? as u64),
            "mailbox-ttl" => cli.mailbox_ttl = Some(secs(&value)?),
            "heartbeat" => cli.heartbeat = Some(secs(&value)?),
            "poll-timeout" => cli.poll_timeout = Some(secs(&value)?),
            "request-timeout" => cli.request_timeout = Some(secs(&value)?),
            _ => return Err(format!("unknown option --{name} (see --help)")),
        }
    }
    for (list, slot) in [
        (http, &mut cli.http),
        (fastcgi, &mut cli.fastcgi),
        (scgi, &mut cli.scgi),
    ] {
        if !list.is_empty() {
            *slot = Some(list);
        }
    }
    let mut config = Config::default();
    if let Some(path) = config_file {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        parse_toml(&text)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .apply(&mut config)?;
    }
    cli.apply(&mut config)?;
    config.validate()?;
    Ok(Command::Run(Box::new(config)))
}

fn parse_toml(text: &str) -> Result<Settings, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        match parse_args(args.iter().map(|s| s.into()))? {
            Command::Run(c) => Ok(*c),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = run(&[]).unwrap();
        assert_eq!(c.http, vec![ListenAddr::parse("127.0.0.1:8420").unwrap()]);
        assert_eq!(c.heartbeat, Duration::from_secs(20));
    }

    #[test]
    fn gateway_listeners_replace_the_default() {
        let c = run(&["--fastcgi", "127.0.0.1:9000", "--scgi", "unix:/tmp/s"]).unwrap();
        assert!(c.http.is_empty());
        assert_eq!(c.fastcgi.len(), 1);
        assert_eq!(c.scgi, vec![ListenAddr::Unix("/tmp/s".into())]);
        let c = run(&["--fastcgi", "127.0.0.1:9000", "--http", "127.0.0.1:1"]).unwrap();
        assert_eq!(c.http.len(), 1);
    }

    #[test]
    fn flags_override() {
        let c = run(&[
            "--http",
            "127.0.0.1:1",
            "--http=unix:/tmp/x",
            "--retain",
            "5",
            "--heartbeat",
            "0.5",
        ])
        .unwrap();
        assert_eq!(c.http.len(), 2);
        assert_eq!(c.http[1], ListenAddr::Unix("/tmp/x".into()));
        assert_eq!(c.retain, 5);
        assert_eq!(c.heartbeat, Duration::from_millis(500));
    }

    #[test]
    fn bad_flags_are_clear() {
        assert!(run(&["--retain", "x"]).unwrap_err().contains("--retain"));
        assert!(
            run(&["--nope", "1"])
                .unwrap_err()
                .contains("unknown option --nope")
        );
        assert!(
            run(&["--http", "nowhere"])
                .unwrap_err()
                .contains("HOST:PORT")
        );
        assert!(
            run(&["--retain", "0"])
                .unwrap_err()
                .contains("retain must be")
        );
        assert!(
            run(&["--heartbeat", "-1"])
                .unwrap_err()
                .contains("heartbeat")
        );
        assert!(
            run(&["--max-message", "2000000"])
                .unwrap_err()
                .contains("retain-bytes")
        );
    }

    #[test]
    fn trust_and_memory_settings() {
        let c = run(&[]).unwrap();
        assert_eq!(c.control_mode, 0o600);
        assert!(c.control_is_default && c.control.ends_with("mailboxd/control.sock"));
        assert_eq!(c.gateway_allow, crate::peer::loopback());
        let c = run(&[
            "--control",
            "unix:/tmp/x/c.sock",
            "--control-mode",
            "0660",
            "--control-allow",
            "uid:33,gid:33",
            "--control-allow=user:root",
            "--gateway-allow",
            "10.0.0.0/8",
            "--max-memory",
            "1048576",
            "--dead-peer-timeout",
            "5",
        ])
        .unwrap();
        assert_eq!(c.control, PathBuf::from("/tmp/x/c.sock"));
        assert!(!c.control_is_default);
        assert_eq!(c.control_mode, 0o660);
        assert_eq!(c.control_allow.len(), 3);
        assert_eq!(c.gateway_allow.len(), 1);
        assert_eq!(
            (c.max_memory, c.dead_peer_timeout),
            (1 << 20, Duration::from_secs(5))
        );
        for (args, expected) in [
            (&["--control", "127.0.0.1:1"][..], "Unix socket"),
            (&["--control-mode", "999"][..], "octal"),
            (&["--control-allow", "root"][..], "uid:N"),
            (&["--gateway-allow", "10.0.0.0/40"][..], "address block"),
            (
                &["--max-memory", "1000"][..],
                "max-memory must be at least retain-bytes",
            ),
            (&["--dead-peer-timeout", "0.5"][..], "at least 1 second"),
            (&["--store", "http://x"][..], "expected redis://"),
            (
                &["--store", "redis://127.0.0.1", "--state-dir", "/tmp/s"][..],
                "exclude each other",
            ),
        ] {
            let err = run(args).unwrap_err();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
        assert!(run(&["--reuse-port"]).unwrap().reuse_port);
        let c = run(&["--store", "unix:/run/redis/redis.sock?db=1"]).unwrap();
        assert_eq!(c.store.map(|s| s.db), Some(1));
        assert!(run(&["--store", "memory"]).unwrap().store.is_none());
        assert!(!run(&[]).unwrap().reuse_port);
        let s = parse_toml(
            "control-allow = [\"gid:33\"]\ngateway-allow = [\"::1\"]\nsecret-file = \"/k\"\nreuse-port = true\n",
        )
        .unwrap();
        let mut c = Config::default();
        s.apply(&mut c).unwrap();
        assert_eq!(c.control_allow, vec![Credential::Gid(33)]);
        assert_eq!(c.secret_file, Some(PathBuf::from("/k")));
        assert!(c.reuse_port);
    }

    #[test]
    fn toml_uses_flag_names() {
        let s = parse_toml("http = [\"127.0.0.1:9\"]\nretain = 7\nmailbox-ttl = 1.5\n").unwrap();
        let mut c = Config::default();
        s.apply(&mut c).unwrap();
        assert_eq!((c.retain, c.mailbox_ttl), (7, Duration::from_millis(1500)));
        assert!(parse_toml("retian = 7").unwrap_err().contains("retian"));
        assert!(parse_toml("retain = \"x\"").is_err());
    }
}
