//! Socket activation: listening sockets handed to mailboxd by systemd (or
//! anything speaking its protocol: `LISTEN_PID`, `LISTEN_FDS`,
//! `LISTEN_FDNAMES`, descriptors from 3 on). Each is named for the kind of
//! listener it is (`http`, `fastcgi`, `scgi`, `control`, `metrics`), as a
//! socket unit's `FileDescriptorName=` sets it, and stands in for the
//! listeners of that kind given by flags. Because the sockets outlive the
//! process, connections made while mailboxd restarts wait in the kernel's
//! accept queue and the next process serves them.
//!
//! A restart through systemd's file descriptor store passes more: the
//! connections the previous process stored (named `conn`) and its snapshot
//! (`handover`, a memfd); see [`crate::upgrade`].

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The first descriptor passed (after stdin, stdout, stderr).
const FIRST_FD: RawFd = 3;

/// Most descriptors accepted: listeners, plus every connection a file
/// descriptor store may have kept (systemd caps a store at 65,536 too).
const MAX_FDS: usize = 65_536 + 64;

/// Everything passed.
#[derive(Debug, Default)]
pub struct Passed {
    /// Listening sockets, by kind.
    pub listeners: Vec<Inherited>,
    /// Connections a previous process stored (`conn`).
    pub conns: Vec<OwnedFd>,
    /// The previous process's snapshot (`handover`).
    pub handover: Option<OwnedFd>,
}

/// One inherited listening socket.
#[derive(Debug)]
pub struct Inherited {
    /// Its `LISTEN_FDNAMES` name.
    pub name: String,
    /// The socket.
    pub fd: OwnedFd,
    /// Whether it is a Unix socket (else TCP).
    pub unix: bool,
}

/// Takes the descriptors passed to this process, if any, and removes the
/// variables so that no child inherits them. Names must be listener kinds,
/// `conn` or `handover`.
pub fn take() -> Result<Passed, String> {
    let mut passed = Passed::default();
    let Ok(pid) = std::env::var("LISTEN_PID") else {
        return Ok(passed);
    };
    let count = std::env::var("LISTEN_FDS").unwrap_or_default();
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    // SAFETY: single-threaded at start; nothing else reads the environment.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(passed); // meant for another process
    }
    let count: usize = count
        .parse()
        .ok()
        .filter(|&n| n <= MAX_FDS)
        .ok_or_else(|| {
            format!("LISTEN_FDS: '{count}' is not a number of sockets up to {MAX_FDS}")
        })?;
    let names: Vec<&str> = if names.is_empty() {
        Vec::new()
    } else {
        names.split(':').collect()
    };
    if names.len() != count {
        return Err(format!(
            "LISTEN_FDNAMES names {} sockets, LISTEN_FDS passes {count}: name each (http, fastcgi, scgi, control, metrics)",
            names.len()
        ));
    }
    for (i, name) in names.iter().enumerate() {
        let fd = FIRST_FD + i as RawFd;
        match *name {
            "conn" => {
                passed.conns.push(
                    crate::upgrade::adopt_fd(fd, libc::S_IFSOCK)
                        .map_err(|e| format!("stored connection {fd}: {e}"))?,
                );
                continue;
            }
            "handover" if passed.handover.is_none() => {
                passed.handover = Some(
                    crate::upgrade::adopt_fd(fd, libc::S_IFREG)
                        .map_err(|e| format!("stored snapshot {fd}: {e}"))?,
                );
                continue;
            }
            "http" | "fastcgi" | "scgi" | "control" | "metrics" => {}
            _ => {
                return Err(format!(
                    "LISTEN_FDNAMES: '{name}' is not a listener kind (http, fastcgi, scgi, control, metrics)"
                ));
            }
        }
        let unix = check(fd).map_err(|e| format!("inherited socket {fd} ({name}): {e}"))?;
        // SAFETY: systemd's protocol hands this descriptor to this process;
        // it is a listening stream socket (checked) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        passed.listeners.push(Inherited {
            name: name.to_string(),
            fd,
            unix,
        });
    }
    Ok(passed)
}

/// Checks that `fd` is a listening stream socket, marks it close-on-exec and
/// non-blocking; true for a Unix socket.
pub(crate) fn check(fd: RawFd) -> std::io::Result<bool> {
    let (kind, listening, family) = socket_facts(fd)?;
    if kind != libc::SOCK_STREAM || !listening {
        return Err(std::io::Error::other("not a listening stream socket"));
    }
    // SAFETY: fcntl on a descriptor checked above; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    set_nonblocking(fd)?;
    match family {
        libc::AF_UNIX => Ok(true),
        libc::AF_INET | libc::AF_INET6 => Ok(false),
        _ => Err(std::io::Error::other("neither TCP nor a Unix socket")),
    }
}

/// A socket's type (`SOCK_STREAM`, ...), whether it listens, and its family.
pub(crate) fn socket_facts(fd: RawFd) -> std::io::Result<(i32, bool, i32)> {
    let int = |opt| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r == 0 {
            Ok(v)
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    Ok((
        int(libc::SO_TYPE)?,
        int(libc::SO_ACCEPTCONN)? != 0,
        int(libc::SO_DOMAIN)?,
    ))
}

/// Makes `fd` non-blocking, as the event loop needs every socket.
pub(crate) fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Sockets handed over are non-blocking already (the flag belongs to
        // the open file both processes share): nothing to change.
        if flags & libc::O_NONBLOCK == 0
            && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
