//! The process's descriptor limit: raised to the hard limit at start, and
//! checked against `--max-connections`.
//!
//! Every parked client is one descriptor. The soft limit is often 1024 while
//! the hard limit is far higher; raising the soft limit is always allowed
//! and costs nothing, so mailboxd does it rather than fail at the 1,021st
//! client.

/// Descriptors kept for listeners, the control connections, the poll and
/// signal pipes, and the log.
pub const RESERVED_FDS: u64 = 64;

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
        assert_eq!(clients_allowed(20_000), 19_936);
        assert_eq!(clients_allowed(10), 0);
    }
}
