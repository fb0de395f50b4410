//! Talking to the service manager (systemd's `sd_notify` protocol): one
//! datagram per message to the socket named by `$NOTIFY_SOCKET`, text
//! `KEY=value` lines, descriptors attached as `SCM_RIGHTS`.
//!
//! mailboxd says `READY=1` once it listens, `MAINPID=` when an upgrade gives
//! the service a new main process, and, when the unit keeps a file
//! descriptor store (`FileDescriptorStoreMax=`, which systemd announces in
//! `$FDSTORE`), stores its listeners, connections and a snapshot there on
//! SIGTERM, so that a restart hands them to the next process. Without
//! `$NOTIFY_SOCKET` every call does nothing.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

/// Descriptors in one datagram: the kernel's `SCM_MAX_FD`.
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// The service manager's socket, if there is one.
#[derive(Debug, Clone)]
pub struct Notifier {
    addr: Vec<u8>,
    /// The unit keeps a file descriptor store of this many descriptors.
    pub fdstore: usize,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
    /// namespace) and `$FDSTORE`; `None` when not run by a service manager.
    pub fn from_env() -> Option<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = socket.as_bytes();
        if bytes.is_empty() || bytes.len() >= 108 || !(bytes[0] == b'/' || bytes[0] == b'@') {
            log::warn!("NOTIFY_SOCKET is neither a path nor an abstract name: ignored");
            return None;
        }
        let mut addr = bytes.to_vec();
        if addr[0] == b'@' {
            addr[0] = 0;
        }
        let fdstore = std::env::var("FDSTORE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Some(Notifier { addr, fdstore })
    }

    /// Sends one message, with descriptors (at most [`MAX_FDS_PER_MESSAGE`]).
    pub fn send(&self, text: &str, fds: &[RawFd]) -> io::Result<()> {
        debug_assert!(fds.len() <= MAX_FDS_PER_MESSAGE);
        // SAFETY: a datagram socket we own, closed below.
        let sock = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        let result = self.send_on(sock, text, fds);
        // SAFETY: closing the socket created above.
        unsafe { libc::close(sock) };
        result
    }

    fn send_on(&self, sock: RawFd, text: &str, fds: &[RawFd]) -> io::Result<()> {
        // SAFETY: sockaddr_un is plain data; the path fits (checked in from_env).
        let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in sa.sun_path.iter_mut().zip(&self.addr) {
            *dst = *src as libc::c_char;
        }
        let sa_len =
            (std::mem::size_of::<libc::sa_family_t>() + self.addr.len()) as libc::socklen_t;
        let mut iov = libc::iovec {
            iov_base: text.as_ptr() as *mut libc::c_void,
            iov_len: text.len(),
        };
        let payload = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        let mut control = vec![0u8; if fds.is_empty() { 0 } else { space }];
        // SAFETY: msghdr is plain data; every pointer set below outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut sa as *mut libc::sockaddr_un).cast();
        msg.msg_namelen = sa_len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = control.len() as _;
            // SAFETY: the control buffer is CMSG_SPACE bytes for `payload`
            // bytes of descriptors, so the first header and its data fit.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr().cast::<u8>(),
                    libc::CMSG_DATA(cmsg),
                    payload as usize,
                );
            }
        }
        loop {
            // SAFETY: msg points at live buffers (above).
            let sent = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
            if sent >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Stores descriptors under `name`, in as many messages as they need.
    pub fn store(&self, name: &str, fds: &[RawFd]) -> io::Result<()> {
        let text = format!("FDSTORE=1\nFDNAME={name}\n");
        for chunk in fds.chunks(MAX_FDS_PER_MESSAGE) {
            self.send(&text, chunk)?;
        }
        Ok(())
    }

    /// Removes every stored descriptor named `name`.
    pub fn unstore(&self, name: &str) -> io::Result<()> {
        self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn messages_and_descriptors_arrive() {
        let dir = std::env::temp_dir().join(format!("mbx-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            addr: path.as_os_str().as_bytes().to_vec(),
            fdstore: 10,
        };
        notifier.send("READY=1\n", &[]).unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        let file = std::fs::File::open("/dev/null").unwrap();
        notifier.store("conn", &[file.as_raw_fd()]).unwrap();
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"FDSTORE=1\nFDNAME=conn\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
