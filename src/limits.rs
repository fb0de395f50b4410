//! The process's descriptor limit: raised to the hard limit at start, and
//! checked against `--max-connections`.
//!
//! Every parked client is one descriptor. The soft limit is often 1024 while
//! the hard limit is far higher; raising the soft limit is always allowed
//! and costs nothing, so mailboxd does it rather than fail at the 1,021st
//! client.

/// Control connections open at once. Backends need a handful (one per
/// worker process at most); past the limit the connection idle longest is
/// closed to make room, so a real backend always gets in.
pub const MAX_CONTROL_CONNS: usize = 256;

/// Descriptors kept out of the clients' reach: every control connection,
/// plus listeners, the poll and signal pipes, the spare descriptor and
/// files. Clients are clamped to the rest, so they can never starve the
/// control socket.
pub const RESERVED_FDS: u64 = 64 + MAX_CONTROL_CONNS as u64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
    }
    Ok(lim.rlim_cur)
}

/// How many client connections `fds` descriptors allow.
pub fn clients_allowed(fds: u64) -> u64 {
    fds.saturating_sub(RESERVED_FDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_is_idempotent_and_leaves_room() {
        let first = raise_nofile().unwrap();
        assert_eq!(raise_nofile().unwrap(), first);
        assert!(first > RESERVED_FDS);
        assert_eq!(clients_allowed(20_000), 19_680);
        assert_eq!(clients_allowed(10), 0);
    }
}
