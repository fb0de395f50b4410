//! mailboxd: a COMET sidecar. Clients park on named mailboxes over HTTP (or,
//! through a web server, FastCGI and SCGI); backends deliver to mailboxes and
//! groups through a Unix control socket. One single-threaded event loop holds
//! everything; see `docs/architecture.md` for the tour.

pub mod activation;
pub mod auth;
pub mod config;
pub mod conn;
pub mod limits;
pub mod message;
pub mod metrics;
pub mod name;
pub mod notify;
pub mod outbuf;
pub mod peer;
pub mod request;
pub mod server;
pub mod session;
pub mod store;
pub mod subscribers;
pub mod throttle;
pub mod timer;
pub mod upgrade;
pub mod wire;
