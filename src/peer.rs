//! Who may connect, and how a peer that vanished is noticed.
//!
//! * Gateway listeners on TCP (FastCGI, SCGI) accept only addresses in
//!   `--gateway-allow`, as the FastCGI specification's
//!   `FCGI_WEB_SERVER_ADDRS` intends: those protocols carry no
//!   authentication, and whoever speaks them can claim any client header.
//! * The control socket accepts only the users and groups in
//!   `--control-allow` (checked with `SO_PEERCRED`), besides mailboxd's own
//!   user.
//! * Client TCP connections get `TCP_USER_TIMEOUT` and keep-alive probes,
//!   so a peer that disappears without FIN or RST (a pulled cable, a phone
//!   out of coverage) is dropped within the heartbeat plus
//!   `--dead-peer-timeout`, instead of the kernel's ~15 minutes of
//!   retransmissions.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::time::Duration;

/// An address block such as `127.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or a bare address (a single host).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("'{s}' is not an address block like 127.0.0.0/8 or ::1/128");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` lies in the block. IPv4 peers reaching an IPv6 socket
    /// (`::ffff:a.b.c.d`) are matched as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (bytes, bits) = ((prefix / 8) as usize, prefix % 8);
    if a[..bytes] != b[..bytes] {
        return false;
    }
    bits == 0 || (a[bytes] ^ b[bytes]) >> (8 - bits) == 0
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The default `--gateway-allow`: loopback only.
pub fn loopback() -> Vec<Cidr> {
    vec![
        Cidr::parse("127.0.0.0/8").expect("valid"),
        Cidr::parse("::1/128").expect("valid"),
    ]
}

/// One entry of `--control-allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A user id.
    Uid(u32),
    /// A group id (the peer's primary group, as `SO_PEERCRED` reports it).
    Gid(u32),
}

impl Credential {
    /// Parses `uid:N`, `gid:N`, `user:NAME` or `group:NAME` (names are
    /// looked up once, at start).
    pub fn parse(s: &str) -> Result<Credential, String> {
        let bad = || format!("'{s}' is not uid:N, gid:N, user:NAME or group:NAME");
        let (kind, value) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "uid" => value.parse().map(Credential::Uid).map_err(|_| bad()),
            "gid" => value.parse().map(Credential::Gid).map_err(|_| bad()),
            "user" => lookup_user(value)
                .map(Credential::Uid)
                .ok_or_else(|| format!("no user named '{value}'")),
            "group" => lookup_group(value)
                .map(Credential::Gid)
                .ok_or_else(|| format!("no group named '{value}'")),
            _ => Err(bad()),
        }
    }

    /// Whether a peer with these ids matches.
    pub fn matches(&self, uid: u32, gid: u32) -> bool {
        match *self {
            Credential::Uid(u) => u == uid,
            Credential::Gid(g) => g == gid,
        }
    }
}

fn lookup_user(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam reads a NUL-terminated string and returns a pointer
    // into static storage (or null); it runs once at start, single-threaded.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    // SAFETY: checked non-null just above.
    (!pw.is_null()).then(|| unsafe { (*pw).pw_uid })
}

fn lookup_group(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: as for getpwnam.
    let gr = unsafe { libc::getgrnam(name.as_ptr()) };
    // SAFETY: checked non-null just above.
    (!gr.is_null()).then(|| unsafe { (*gr).gr_gid })
}

/// The user and primary group of the process at the other end of a Unix socket.
pub fn peer_ids(fd: RawFd) -> io::Result<(u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.uid, cred.gid))
}

/// This process's user id.
pub fn own_uid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: u32) -> io::Result<()> {
    let value = value as libc::c_int;
    // SAFETY: setsockopt reads one c_int from a valid pointer.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Arms dead-peer detection on a TCP connection: written data that stays
/// unacknowledged for `timeout` aborts the connection (`TCP_USER_TIMEOUT`),
/// and an idle connection is probed after half of it, so one that never
/// gets writes (a held long-poll) is caught too.
pub fn detect_dead_peer(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let ms = timeout.as_millis().min(u32::MAX as u128) as u32;
    let idle = (timeout.as_secs() / 2).clamp(1, 32_767) as u32;
    let interval = (timeout.as_secs() / 6).clamp(1, 32_767) as u32;
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms)?;
    set_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle)?;
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval)?;
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_blocks_match_by_prefix() {
        let lo = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains(ip("127.1.2.3")));
        assert!(lo.contains(ip("::ffff:127.0.0.1")), "v4-mapped");
        assert!(!lo.contains(ip("128.0.0.1")));
        assert!(!lo.contains(ip("::1")));
        let odd = Cidr::parse("10.1.2.128/25").unwrap();
        assert!(odd.contains(ip("10.1.2.255")));
        assert!(!odd.contains(ip("10.1.2.127")));
        let host = Cidr::parse("::1").unwrap();
        assert!(host.contains(ip("::1")));
        assert!(!host.contains(ip("::2")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert_eq!(host.to_string(), "::1/128");
        for bad in [
            "",
            "127.0.0.1/33",
            "::1/129",
            "localhost",
            "1.2.3.4/x",
            "1.2.3/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_parse_and_match() {
        assert_eq!(Credential::parse("uid:33"), Ok(Credential::Uid(33)));
        assert_eq!(Credential::parse("gid:7"), Ok(Credential::Gid(7)));
        assert_eq!(Credential::parse("user:root"), Ok(Credential::Uid(0)));
        assert_eq!(Credential::parse("group:root"), Ok(Credential::Gid(0)));
        assert!(Credential::parse("user:no-such-user-here").is_err());
        assert!(Credential::parse("33").is_err());
        assert!(Credential::parse("uid:-1").is_err());
        assert!(Credential::Uid(5).matches(5, 9));
        assert!(!Credential::Gid(5).matches(5, 9));
    }

    #[test]
    fn peer_credentials_of_a_socket_pair_are_ours() {
        use std::os::fd::AsRawFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(peer_ids(a.as_raw_fd()).unwrap().0, own_uid());
    }
}
