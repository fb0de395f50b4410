//! The `mailboxd` binary: flags → config → logging → event loop → exit code.

use std::process::ExitCode;

use mailboxd::config::{self, Command};
use mailboxd::server::Server;
use mailboxd::store::{JournalConfig, JournaledStore, MailboxStore, MemoryStore, RedisStore};

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
    let store: Box<dyn MailboxStore> = match (&config.store, &config.state_dir) {
        (Some(redis), _) => Box::new(RedisStore::new(redis.clone(), config.store_limits())),
        (None, None) => Box::new(MemoryStore::starting_now(config.store_limits())),
        (None, Some(dir)) => {
            let journal = JournalConfig {
                dir: dir.clone(),
                fsync: config.fsync,
                compact_after: config.compact_after,
            };
            match JournaledStore::open(config.store_limits(), journal, MemoryStore::clock_id()) {
                Ok(store) => Box::new(store),
                Err(e) => {
                    eprintln!("mailboxd: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let result = Server::new(*config, store).and_then(|mut server| server.run());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailboxd: {e}");
            ExitCode::FAILURE
        }
    }
}
