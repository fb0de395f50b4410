//! One non-blocking connection to Redis, driven by the event loop: where
//! Redis is (`redis://…`, `unix:…`), connecting without blocking, RESP3
//! commands out and frames in. The `redis-protocol` crate encodes and
//! decodes; this file only moves bytes and never waits. What the frames
//! mean is the store's ([`super::RedisStore`]).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use redis_protocol::resp3::decode::complete::decode;
use redis_protocol::resp3::encode::complete::encode_borrowed;
use redis_protocol::resp3::types::{BorrowedFrame, OwnedFrame};

/// Where Redis listens, and how to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisAddr {
    /// TCP address or Unix socket.
    pub socket: RedisSocket,
    /// The database number (`SELECT`).
    pub db: u32,
    /// ACL user, if any.
    pub user: Option<String>,
    /// Password, if any.
    pub password: Option<String>,
}

/// How Redis is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisSocket {
    /// `redis://HOST:PORT`, resolved once at start.
    Tcp(SocketAddr),
    /// `unix:PATH`.
    Unix(PathBuf),
}

impl fmt::Debug for RedisAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Shown in logs: never the password.
impl fmt::Display for RedisAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.socket {
            RedisSocket::Tcp(a) => write!(f, "redis://{a}/{}", self.db),
            RedisSocket::Unix(p) => write!(f, "unix:{}?db={}", p.display(), self.db),
        }
    }
}

impl RedisAddr {
    /// Parses `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` or
    /// `unix:PATH[?db=DB]`. A host name is resolved here, once.
    pub fn parse(s: &str) -> Result<RedisAddr, String> {
        let bad = |why: &str| format!("store '{s}': {why}");
        if let Some(rest) = s.strip_prefix("unix:") {
            let (path, db) = match rest.split_once("?db=") {
                Some((p, db)) => (p, db.parse().map_err(|_| bad("bad database number"))?),
                None => (rest, 0),
            };
            if path.is_empty() {
                return Err(bad("no socket path"));
            }
            return Ok(RedisAddr {
                socket: RedisSocket::Unix(PathBuf::from(path)),
                db,
                user: None,
                password: None,
            });
        }
        let rest = s
            .strip_prefix("redis://")
            .ok_or_else(|| bad("expected redis://HOST:PORT[/DB] or unix:PATH"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, db)) => (h, db.parse().map_err(|_| bad("bad database number"))?),
            None => (rest, 0),
        };
        let hostport = if hostport.contains(':') && !hostport.ends_with(']') {
            hostport.to_string()
        } else {
            format!("{hostport}:6379")
        };
        let addr = hostport
            .to_socket_addrs()
            .map_err(|e| bad(&e.to_string()))?
            .next()
            .ok_or_else(|| bad("host has no address"))?;
        let (user, password) = match auth.map(|a| a.split_once(':')) {
            None => (None, None),
            Some(None) => (None, auth.map(str::to_string)),
            Some(Some((u, p))) => ((!u.is_empty()).then(|| u.to_string()), Some(p.to_string())),
        };
        Ok(RedisAddr {
            socket: RedisSocket::Tcp(addr),
            db,
            user,
            password,
        })
    }
}

#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }

    fn connected(&self) -> io::Result<bool> {
        let (err, peer) = match self {
            Stream::Tcp(s) => (s.take_error()?, s.peer_addr().map(|_| ())),
            Stream::Unix(s) => (s.take_error()?, s.peer_addr().map(|_| ())),
        };
        if let Some(e) = err {
            return Err(e);
        }
        match peer {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// No socket.
    Down,
    /// `connect` in progress.
    Connecting,
    /// Connected: commands may be written.
    Up,
}

/// What a read turned up.
#[derive(Debug)]
pub enum Incoming {
    /// A reply, for the oldest command awaiting one.
    Reply(OwnedFrame),
    /// A push message (pub/sub), in order with the replies.
    Push(Vec<OwnedFrame>),
}

/// The connection itself.
#[derive(Debug)]
pub struct Link {
    /// Where Redis is.
    pub addr: RedisAddr,
    registry: Option<Registry>,
    token: Token,
    stream: Option<Stream>,
    state: LinkState,
    out: Vec<u8>,
    written: usize,
    inbuf: Vec<u8>,
    max_frame: usize,
}

/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;

impl Link {
    /// A link to `addr`, down; unread input past `max_frame` bytes ends it.
    pub fn new(addr: RedisAddr, max_frame: usize) -> Link {
        Link {
            addr,
            registry: None,
            token: Token(0),
            stream: None,
            state: LinkState::Down,
            out: Vec::new(),
            written: 0,
            inbuf: Vec::new(),
            max_frame,
        }
    }

    /// Where its sockets are registered.
    pub fn attach(&mut self, registry: &Registry, token: Token) {
        match registry.try_clone() {
            Ok(r) => self.registry = Some(r),
            Err(e) => log::error!("redis: cannot share the poll registry: {e}"),
        }
        self.token = token;
    }

    /// Its state.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// Starts connecting; an error means it is still down.
    pub fn connect(&mut self) -> io::Result<()> {
        debug_assert_eq!(self.state, LinkState::Down);
        let mut stream = match &self.addr.socket {
            RedisSocket::Tcp(a) => {
                let s = TcpStream::connect(*a)?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
            RedisSocket::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
        };
        let registry = self
            .registry
            .as_ref()
            .ok_or_else(|| io::Error::other("not attached to the event loop"))?;
        registry.register(
            stream.source(),
            self.token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.stream = Some(stream);
        self.state = LinkState::Connecting;
        Ok(())
    }

    /// Drops the socket and everything unsent or unread.
    pub fn close(&mut self) {
        if let (Some(mut s), Some(r)) = (self.stream.take(), self.registry.as_ref()) {
            let _ = r.deregister(s.source());
        }
        self.state = LinkState::Down;
        self.out.clear();
        self.written = 0;
        self.inbuf.clear();
    }

    /// After a readiness event while connecting: true once connected.
    pub fn finish_connect(&mut self) -> io::Result<bool> {
        let Some(s) = &self.stream else {
            return Ok(false);
        };
        if self.state != LinkState::Connecting {
            return Ok(self.state == LinkState::Up);
        }
        if s.connected()? {
            self.state = LinkState::Up;
            return Ok(true);
        }
        Ok(false)
    }

    /// Queues one command (its arguments as bulk strings).
    pub fn command(&mut self, args: &[&[u8]]) {
        let frame = BorrowedFrame::Array {
            data: &args
                .iter()
                .map(|a| BorrowedFrame::BlobString {
                    data: a,
                    attributes: None,
                })
                .collect::<Vec<_>>(),
            attributes: None,
        };
        let at = self.out.len();
        self.out.resize(at + frame.encode_len(false), 0);
        match encode_borrowed(&mut self.out[at..], &frame, false) {
            Ok(n) => self.out.truncate(at + n),
            Err(e) => {
                debug_assert!(false, "encoding a command: {e}");
                self.out.truncate(at);
            }
        }
    }

    /// Writes what it can.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.state != LinkState::Up {
            return Ok(());
        }
        let Some(s) = &mut self.stream else {
            return Ok(());
        };
        while self.written < self.out.len() {
            match s.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        } else if self.written > READ_CHUNK {
            self.out.drain(..self.written);
            self.written = 0;
        }
        Ok(())
    }

    /// Reads everything available and decodes every whole frame, in order.
    pub fn read(&mut self, frames: &mut Vec<Incoming>) -> io::Result<()> {
        let Some(s) = &mut self.stream else {
            return Ok(());
        };
        let mut eof = false;
        loop {
            let at = self.inbuf.len();
            self.inbuf.resize(at + READ_CHUNK, 0);
            match s.read(&mut self.inbuf[at..]) {
                Ok(0) => {
                    self.inbuf.truncate(at);
                    eof = true;
                    break;
                }
                Ok(n) => self.inbuf.truncate(at + n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.inbuf.truncate(at);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.inbuf.truncate(at),
                Err(e) => {
                    self.inbuf.truncate(at);
                    return Err(e);
                }
            }
            decode_all(&mut self.inbuf, self.max_frame, frames)?;
        }
        decode_all(&mut self.inbuf, self.max_frame, frames)?;
        if eof {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "redis closed the connection",
            ));
        }
        Ok(())
    }
}

/// Takes every whole frame off the front of `inbuf`.
fn decode_all(inbuf: &mut Vec<u8>, max_frame: usize, frames: &mut Vec<Incoming>) -> io::Result<()> {
    {
        let mut used = 0;
        while used < inbuf.len() {
            match decode(&inbuf[used..]) {
                Ok(Some((frame, n))) => {
                    used += n;
                    frames.push(match frame {
                        OwnedFrame::Push { data, .. } => Incoming::Push(data),
                        other => Incoming::Reply(other),
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad RESP3 from redis: {e}"),
                    ));
                }
            }
        }
        inbuf.drain(..used);
        if inbuf.len() > max_frame {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a reply from redis exceeds {max_frame} bytes"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a = RedisAddr::parse("redis://127.0.0.1:7000/3").unwrap();
        assert_eq!(
            a.socket,
            RedisSocket::Tcp("127.0.0.1:7000".parse().unwrap())
        );
        assert_eq!((a.db, a.user, a.password), (3, None, None));
        let a = RedisAddr::parse("redis://app:s3cret@127.0.0.1").unwrap();
        assert_eq!(
            a.socket,
            RedisSocket::Tcp("127.0.0.1:6379".parse().unwrap())
        );
        assert_eq!(
            (a.user.as_deref(), a.password.as_deref()),
            (Some("app"), Some("s3cret"))
        );
        assert!(!a.to_string().contains("s3cret"));
        let a = RedisAddr::parse("redis://:pw@[::1]:6380/").unwrap();
        assert_eq!(a.socket, RedisSocket::Tcp("[::1]:6380".parse().unwrap()));
        assert_eq!((a.user, a.password.as_deref()), (None, Some("pw")));
        let a = RedisAddr::parse("unix:/run/redis.sock?db=2").unwrap();
        assert_eq!(a.socket, RedisSocket::Unix("/run/redis.sock".into()));
        assert_eq!(a.db, 2);
        for bad in [
            "http://x",
            "redis://127.0.0.1:1/x",
            "unix:",
            "redis://127.0.0.1:99999",
        ] {
            assert!(RedisAddr::parse(bad).is_err(), "{bad}");
        }
    }
}
