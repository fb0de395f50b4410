//! Rate-limited warnings: one line per interval and kind, with a count.
//!
//! Anything a remote peer can cause at will (a refused connection, a slow
//! client cut, an overdue request head) would otherwise let it write the log
//! as fast as it can connect. Each kind logs its first occurrence at once,
//! then stays quiet for [`INTERVAL`] and says how many more there were.

use std::time::{Duration, Instant};

/// The quiet period after a logged warning of one kind.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// One kind of warning. Events that are only counted still go to the log
/// at debug level, so `RUST_LOG=debug` shows every one.
#[derive(Debug)]
pub struct Throttle {
    /// How the summary line names the suppressed events.
    what: &'static str,
    /// When the current quiet period began.
    since: Option<Instant>,
    /// Events not logged during it.
    suppressed: u64,
}

impl Throttle {
    /// A throttle whose summary reads "`n` more `what`".
    pub const fn new(what: &'static str) -> Throttle {
        Throttle {
            what,
            since: None,
            suppressed: 0,
        }
    }

    /// Logs `line()` at warn level unless one was logged within the interval,
    /// in which case the event is only counted.
    pub fn note(&mut self, now: Instant, line: impl FnOnce() -> String) {
        match self.since {
            Some(t) if now < t + INTERVAL => {
                self.suppressed += 1;
                if log::log_enabled!(log::Level::Debug) {
                    let line = line();
                    log::debug!("{line}");
                }
            }
            _ => {
                self.flush(now);
                let line = line();
                log::warn!("{line}");
                self.since = Some(now);
            }
        }
    }

    /// Logs the count of suppressed events once the interval is over.
    pub fn flush(&mut self, now: Instant) {
        if let Some(t) = self.since
            && now >= t + INTERVAL
        {
            if self.suppressed > 0 {
                log::warn!(
                    "{} more {} in the last {} s",
                    self.suppressed,
                    self.what,
                    INTERVAL.as_secs()
                );
            }
            self.suppressed = 0;
            self.since = None;
        }
    }

    /// When [`Throttle::flush`] next has something to say.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.since
            .filter(|_| self.suppressed > 0)
            .map(|t| t + INTERVAL)
    }
}

/// Every throttled kind of warning the server logs.
#[derive(Debug)]
pub struct Warnings {
    /// Connections refused at `--max-connections` or the control limit.
    pub refused: Throttle,
    /// Clients cut at `--max-output`.
    pub slow_clients: Throttle,
    /// Request heads not complete within `--request-timeout`.
    pub head_timeouts: Throttle,
    /// Gateway peers outside `--gateway-allow`, control peers outside `--control-allow`.
    pub denied: Throttle,
    /// `accept` failures (descriptor exhaustion).
    pub accept_errors: Throttle,
    /// Malformed FastCGI/SCGI input and memory caps hit by unfinished requests.
    pub malformed: Throttle,
}

impl Default for Warnings {
    fn default() -> Warnings {
        Warnings {
            refused: Throttle::new("connections refused"),
            slow_clients: Throttle::new("slow clients cut at max-output"),
            head_timeouts: Throttle::new("request heads timed out"),
            denied: Throttle::new("peers denied"),
            accept_errors: Throttle::new("accept failures"),
            malformed: Throttle::new("malformed or oversize gateway requests"),
        }
    }
}

impl Warnings {
    fn all(&self) -> [&Throttle; 6] {
        [
            &self.refused,
            &self.slow_clients,
            &self.head_timeouts,
            &self.denied,
            &self.accept_errors,
            &self.malformed,
        ]
    }

    fn all_mut(&mut self) -> [&mut Throttle; 6] {
        [
            &mut self.refused,
            &mut self.slow_clients,
            &mut self.head_timeouts,
            &mut self.denied,
            &mut self.accept_errors,
            &mut self.malformed,
        ]
    }

    /// Flushes every kind whose interval is over.
    pub fn flush(&mut self, now: Instant) {
        for t in self.all_mut() {
            t.flush(now);
        }
    }

    /// The earliest instant a summary line is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.all().iter().filter_map(|t| t.next_deadline()).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_interval_and_resets_after() {
        let t0 = Instant::now();
        let mut t = Throttle::new("x");
        let mut logged = 0;
        for i in 0..100 {
            t.note(t0 + Duration::from_millis(i), || {
                logged += 1;
                String::new()
            });
        }
        assert_eq!((logged, t.suppressed), (1, 99));
        assert_eq!(t.next_deadline(), Some(t0 + INTERVAL));
        t.flush(t0 + INTERVAL - Duration::from_millis(1));
        assert_eq!(t.suppressed, 99);
        t.flush(t0 + INTERVAL);
        assert_eq!((t.suppressed, t.since, t.next_deadline()), (0, None, None));
        t.note(t0 + INTERVAL, || {
            logged += 1;
            String::new()
        });
        assert_eq!(logged, 2);
    }
}
