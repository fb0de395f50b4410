//! Every figure the server reports, in one place: the counters the loop
//! bumps ([`Counters`]), and one table of figures ([`Figures`]) rendered
//! both as the `STATS` reply and as a Prometheus text page
//! (`--metrics`). A new figure is one line in [`Figures::entries`].
//!
//! Naming follows Prometheus's conventions: a `mailboxd_` prefix, base
//! units (seconds, bytes), `_total` on counters. The `STATS` line keeps
//! its own names and order, which are part of the control protocol.

use std::fmt::Write;

use crate::store::StoreStats;
use crate::wire::control::{ErrorCode, VERBS};

/// Upper bounds of the loop-turn histogram, in seconds.
pub const TURN_BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// How long loop turns took: a cumulative Prometheus histogram.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    /// Turns at or under each bound of [`TURN_BUCKETS`] (not cumulative
    /// here; rendering sums them).
    buckets: [u64; TURN_BUCKETS.len()],
    count: u64,
    sum_ns: u128,
}

impl Histogram {
    /// Records one turn of `ns` nanoseconds.
    pub fn observe(&mut self, ns: u64) {
        let secs = ns as f64 / 1e9;
        if let Some(i) = TURN_BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_ns += u128::from(ns);
    }
}

/// Counters the loop bumps as things happen.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Frames and answers written to subscribers since start.
    pub written: u64,
    /// Clients disconnected for exceeding `max-output`.
    pub slow_closed: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections refused by `max-connections` (or the control limit with
    /// every control connection busy).
    pub refused: u64,
    /// Peers refused by `--gateway-allow`, `--control-allow` or `--metrics-allow`.
    pub denied: u64,
    /// `accept` failures, descriptor exhaustion among them.
    pub accept_errors: u64,
    /// Idle control connections closed to make room for a new one.
    pub control_evicted: u64,
    /// Gap notices sent to clients.
    pub gaps: u64,
    /// Control commands, by verb ([`VERBS`]).
    pub commands: [u64; VERBS.len()],
    /// `ERR` replies, by code ([`ErrorCode::ALL`]).
    pub errors: [u64; ErrorCode::ALL.len()],
    /// Event-loop turn times.
    pub turns: Histogram,
    /// Metrics pages served.
    pub scrapes: u64,
}

/// What is open right now, counted when a report is made.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// Client connections open (all gateways).
    pub clients: usize,
    /// By gateway: HTTP, FastCGI, SCGI.
    pub by_gateway: [usize; 3],
    /// Local subscribers in all.
    pub subscribers: usize,
    /// By transport: SSE, long-poll, stream.
    pub by_transport: [usize; 3],
    /// Control connections open.
    pub control: usize,
    /// Seconds since start.
    pub uptime: u64,
}

/// Gateway label values, in the order of [`Gauges::by_gateway`].
pub const GATEWAYS: [&str; 3] = ["http", "fastcgi", "scgi"];
/// Transport label values, in the order of [`Gauges::by_transport`].
pub const TRANSPORTS: [&str; 3] = ["sse", "poll", "stream"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Type {
    Counter,
    Gauge,
}

/// One figure: its `STATS` name (if it has one), its Prometheus family,
/// and its samples (label value → value).
struct Entry {
    stats: Option<&'static str>,
    name: &'static str,
    help: &'static str,
    kind: Type,
    label: Option<&'static str>,
    samples: Vec<(&'static str, u64)>,
}

/// Everything reported at one moment.
pub struct Figures<'a> {
    /// The loop's counters.
    pub counters: &'a Counters,
    /// What is open now.
    pub gauges: Gauges,
    /// The store's totals.
    pub store: StoreStats,
}

impl Figures<'_> {
    fn entries(&self) -> Vec<Entry> {
        let c = self.counters;
        let g = &self.gauges;
        let s = &self.store;
        let one = |stats, name, help, kind, v: u64| Entry {
            stats,
            name,
            help,
            kind,
            label: None,
            samples: vec![("", v)],
        };
        let labelled = |name, help, kind, label, samples| Entry {
            stats: None,
            name,
            help,
            kind,
            label: Some(label),
            samples,
        };
        use Type::{Counter, Gauge};
        // The STATS entries come first, in the order of the STATS reply.
        vec![
            one(
                Some("connections"),
                "mailboxd_connections",
                "Client connections open.",
                Gauge,
                g.clients as u64,
            ),
            one(
                Some("subscribers"),
                "mailboxd_subscribers",
                "Requests parked on a mailbox in this process.",
                Gauge,
                g.subscribers as u64,
            ),
            one(
                Some("mailboxes"),
                "mailboxd_mailboxes",
                "Mailboxes in the store.",
                Gauge,
                s.mailboxes as u64,
            ),
            one(
                Some("groups"),
                "mailboxd_groups",
                "Groups in the store.",
                Gauge,
                s.groups as u64,
            ),
            one(
                Some("delivered"),
                "mailboxd_messages_stored_total",
                "Messages accepted into mailboxes (ids issued).",
                Counter,
                s.messages,
            ),
            one(
                Some("written"),
                "mailboxd_deliveries_total",
                "Messages and answers written to subscribers.",
                Counter,
                c.written,
            ),
            one(
                Some("retained"),
                "mailboxd_retained_messages",
                "Messages retained for clients that come back.",
                Gauge,
                s.retained as u64,
            ),
            one(
                Some("evicted"),
                "mailboxd_evicted_messages_total",
                "Retained messages evicted by the retention limits.",
                Counter,
                s.evicted,
            ),
            one(
                Some("expired"),
                "mailboxd_expired_mailboxes_total",
                "Mailboxes expired after --mailbox-ttl without a subscriber.",
                Counter,
                s.expired,
            ),
            one(
                Some("slow_closed"),
                "mailboxd_slow_clients_closed_total",
                "Clients cut off at --max-output.",
                Counter,
                c.slow_closed,
            ),
            one(
                Some("accepted"),
                "mailboxd_connections_accepted_total",
                "Connections accepted.",
                Counter,
                c.accepted,
            ),
            one(
                Some("refused"),
                "mailboxd_connections_refused_total",
                "Connections refused at a connection limit.",
                Counter,
                c.refused,
            ),
            one(
                Some("control"),
                "mailboxd_control_connections",
                "Control connections open.",
                Gauge,
                g.control as u64,
            ),
            one(
                Some("uptime"),
                "mailboxd_uptime_seconds",
                "Seconds since start.",
                Gauge,
                g.uptime,
            ),
            one(
                Some("denied"),
                "mailboxd_peers_denied_total",
                "Peers refused by an allow-list.",
                Counter,
                c.denied,
            ),
            one(
                Some("accept_errors"),
                "mailboxd_accept_errors_total",
                "Failed accepts (descriptor exhaustion among them).",
                Counter,
                c.accept_errors,
            ),
            one(
                Some("control_evicted"),
                "mailboxd_control_connections_evicted_total",
                "Idle control connections closed to make room.",
                Counter,
                c.control_evicted,
            ),
            one(
                Some("retained_bytes"),
                "mailboxd_retained_bytes",
                "What retained messages cost, in bytes.",
                Gauge,
                s.retained_bytes as u64,
            ),
            one(
                Some("journal_syncs"),
                "mailboxd_journal_syncs_total",
                "Journal syncs to disk.",
                Counter,
                s.journal_syncs,
            ),
            one(
                Some("journal_bytes"),
                "mailboxd_journal_written_bytes_total",
                "Bytes written to the journal.",
                Counter,
                s.journal_bytes,
            ),
            one(
                Some("snapshots"),
                "mailboxd_snapshots_total",
                "Snapshots written.",
                Counter,
                s.snapshots,
            ),
            one(
                None,
                "mailboxd_gap_notices_total",
                "Gap notices sent to resuming clients.",
                Counter,
                c.gaps,
            ),
            one(
                None,
                "mailboxd_metrics_scrapes_total",
                "Metrics pages served.",
                Counter,
                c.scrapes,
            ),
            labelled(
                "mailboxd_gateway_connections",
                "Client connections open, by gateway.",
                Gauge,
                "gateway",
                GATEWAYS
                    .iter()
                    .zip(g.by_gateway)
                    .map(|(l, v)| (*l, v as u64))
                    .collect(),
            ),
            labelled(
                "mailboxd_transport_subscribers",
                "Parked requests, by transport.",
                Gauge,
                "transport",
                TRANSPORTS
                    .iter()
                    .zip(g.by_transport)
                    .map(|(l, v)| (*l, v as u64))
                    .collect(),
            ),
            labelled(
                "mailboxd_control_commands_total",
                "Control commands received, by verb.",
                Counter,
                "verb",
                VERBS.iter().zip(c.commands).map(|(l, v)| (*l, v)).collect(),
            ),
            labelled(
                "mailboxd_control_errors_total",
                "ERR replies sent to backends, by code.",
                Counter,
                "code",
                ErrorCode::ALL
                    .iter()
                    .zip(c.errors)
                    .map(|(code, v)| (code.as_str(), v))
                    .collect(),
            ),
        ]
    }

    /// The `STATS` reply's fields (after `OK `).
    pub fn stats_line(&self) -> String {
        let mut line = String::new();
        for e in self.entries() {
            if let Some(name) = e.stats {
                if !line.is_empty() {
                    line.push(' ');
                }
                let _ = write!(line, "{name}={}", e.samples[0].1);
            }
        }
        line
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        for e in self.entries() {
            let kind = match e.kind {
                Type::Counter => "counter",
                Type::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {} {}", e.name, e.help);
            let _ = writeln!(out, "# TYPE {} {kind}", e.name);
            for (value, n) in &e.samples {
                match e.label {
                    Some(label) => {
                        let _ = writeln!(out, "{}{{{label}=\"{value}\"}} {n}", e.name);
                    }
                    None => {
                        let _ = writeln!(out, "{} {n}", e.name);
                    }
                }
            }
        }
        let h = &self.counters.turns;
        let name = "mailboxd_loop_turn_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time the event loop spent on one turn, from wake-up to sleep."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in TURN_BUCKETS.iter().zip(h.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum_ns as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {}", h.count);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(c: &Counters) -> Figures<'_> {
        Figures {
            counters: c,
            gauges: Gauges {
                clients: 3,
                by_gateway: [2, 1, 0],
                subscribers: 2,
                by_transport: [1, 1, 0],
                control: 1,
                uptime: 9,
            },
            store: StoreStats {
                mailboxes: 4,
                messages: 7,
                ..StoreStats::default()
            },
        }
    }

    #[test]
    fn stats_line_keeps_the_protocol_names_and_order() {
        let c = Counters {
            written: 5,
            accepted: 6,
            ..Counters::default()
        };
        assert_eq!(
            figures(&c).stats_line(),
            "connections=3 subscribers=2 mailboxes=4 groups=0 delivered=7 written=5 retained=0 evicted=0 expired=0 slow_closed=0 accepted=6 refused=0 control=1 uptime=9 denied=0 accept_errors=0 control_evicted=0 retained_bytes=0 journal_syncs=0 journal_bytes=0 snapshots=0"
        );
    }

    #[test]
    fn prometheus_page_has_types_labels_and_a_cumulative_histogram() {
        let mut c = Counters::default();
        c.commands[3] = 2;
        c.errors[ErrorCode::Unavailable.index()] = 1;
        c.turns.observe(50_000); // 50 µs
        c.turns.observe(3_000_000); // 3 ms
        c.turns.observe(5_000_000_000); // 5 s: over every bound
        let page = figures(&c).prometheus();
        assert!(
            page.contains(
                "# TYPE mailboxd_deliveries_total counter\nmailboxd_deliveries_total 0\n"
            )
        );
        assert!(page.contains("mailboxd_control_commands_total{verb=\"SEND\"} 2\n"));
        assert!(page.contains("mailboxd_control_errors_total{code=\"UNAVAILABLE\"} 1\n"));
        assert!(page.contains("mailboxd_gateway_connections{gateway=\"http\"} 2\n"));
        assert!(page.contains("mailboxd_loop_turn_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(page.contains("mailboxd_loop_turn_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(page.contains("mailboxd_loop_turn_seconds_bucket{le=\"1\"} 2\n"));
        assert!(page.contains("mailboxd_loop_turn_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(page.contains("mailboxd_loop_turn_seconds_count 3\n"));
    }
}
