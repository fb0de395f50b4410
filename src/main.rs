//! The `mailboxd` binary: flags → config → logging → event loop → exit code.

use std::process::ExitCode;

use std::time::SystemTime;

use mailboxd::config::{self, Command, Config};
use mailboxd::server::Server;
use mailboxd::store::{JournalConfig, JournaledStore, MailboxStore, MemoryStore, RedisStore};
use mailboxd::upgrade::{Inheritance, Succession};
use mailboxd::wire::handover::StoreState;

fn main() -> ExitCode {
    // A file-size limit (or a full disk) must fail a journal write with an
    // error the store reports, not kill the daemon with SIGXFSZ.
    // SAFETY: setting a signal disposition before anything else runs.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let config = match config::parse_args(std::env::args_os().skip(1)) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            print!("{}", config::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("mailboxd {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mailboxd: {e}");
            return ExitCode::from(2);
        }
    };
    // A successor in a binary upgrade: its predecessor waits for it, and
    // every failure from here is told to it (it keeps serving) and ends
    // this process without touching anything inherited.
    let mut passed = match mailboxd::activation::take() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mailboxd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let unstore = !passed.conns.is_empty() || passed.handover.is_some();
    let mut inheritance = match Inheritance::take(&mut passed) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("mailboxd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let fail = |inheritance: Option<Inheritance>, e: String| -> ExitCode {
        eprintln!("mailboxd: {e}");
        if let Some(mut i) = inheritance {
            i.refuse(&e);
            // No destructor runs: what was inherited stays the predecessor's
            // (or systemd's, which starts us again with it).
            std::process::exit(1);
        }
        ExitCode::FAILURE
    };
    let mut succession = Succession {
        listeners: passed.listeners,
        unstore,
        ..Succession::default()
    };
    let mut state = None;
    let mut taken_ms = None;
    if let Some(i) = &mut inheritance {
        succession.direct = i.direct();
        let snapshot = std::mem::take(&mut i.snapshot);
        taken_ms = Some(snapshot.taken_ms);
        state = Some(snapshot.store);
        succession.handed_listeners = snapshot.listeners;
        succession.conns = snapshot.conns;
        succession.stored = i.stored.take();
    }
    let started = std::time::Instant::now();
    let store = match open_store(&config, state) {
        Ok(store) => store,
        Err(e) => return fail(inheritance, e),
    };
    let loaded = started.elapsed();
    let adopted = succession.conns.len();
    let mut server = match Server::new(*config, store, succession) {
        Ok(server) => server,
        Err(e) => return fail(inheritance, e),
    };
    let built = started.elapsed() - loaded;
    if let Some(i) = inheritance {
        let how = if i.direct() {
            "the previous process"
        } else {
            "the file descriptor store"
        };
        if let Err(e) = i.confirm() {
            eprintln!("mailboxd: upgrade: {e}; exiting");
            std::process::exit(1);
        }
        let frozen = taken_ms.map(mailboxd::wire::journal::from_ms);
        let pause = frozen.and_then(|t| SystemTime::now().duration_since(t).ok());
        log::info!(
            "upgrade: took over from {how} (store loaded in {} ms, {adopted} connections \
             adopted in {} ms); serving {} ms after the previous process froze",
            loaded.as_millis(),
            built.as_millis(),
            pause.unwrap_or_default().as_millis()
        );
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailboxd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The store the configuration names, with the state a predecessor handed
/// over (a binary upgrade), which must be of the same kind.
fn open_store(
    config: &Config,
    handed: Option<StoreState>,
) -> Result<Box<dyn MailboxStore>, String> {
    let changed = |was: &str| {
        Err(format!(
            "the store changed since the running process started (it used {was}); \
             stop and start instead of upgrading"
        ))
    };
    match (&config.store, &config.state_dir, handed) {
        (Some(redis), _, None) => Ok(Box::new(RedisStore::new(
            redis.clone(),
            config.store_limits(),
            None,
        ))),
        (Some(redis), _, Some(StoreState::Redis { instance })) => Ok(Box::new(RedisStore::new(
            redis.clone(),
            config.store_limits(),
            Some(instance),
        ))),
        (None, None, None) => Ok(Box::new(MemoryStore::starting_now(config.store_limits()))),
        (None, None, Some(StoreState::Memory(records))) => {
            let store = MemoryStore::from_records(config.store_limits(), &records)
                .map_err(|e| format!("handover snapshot: {e}"))?;
            Ok(Box::new(store))
        }
        (None, Some(dir), handed) => {
            let lock = match handed {
                None => None,
                // Through systemd the predecessor is gone, and its lock with it.
                Some(StoreState::Journal { lock_fd }) if lock_fd < 0 => None,
                Some(StoreState::Journal { lock_fd }) => Some(
                    mailboxd::upgrade::adopt_fd(lock_fd, libc::S_IFREG)
                        .map(std::fs::File::from)
                        .map_err(|e| format!("state dir lock handed over ({lock_fd}): {e}"))?,
                ),
                Some(_) => return changed("another store than --state-dir"),
            };
            let journal = JournalConfig {
                dir: dir.clone(),
                fsync: config.fsync,
                compact_after: config.compact_after,
            };
            let store = JournaledStore::open(
                config.store_limits(),
                journal,
                MemoryStore::clock_id(),
                lock,
            )?;
            Ok(Box::new(store))
        }
        (Some(_), _, Some(_)) => changed("another store than Redis"),
        (None, None, Some(_)) => changed("--state-dir or Redis"),
    }
}
