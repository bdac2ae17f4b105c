use std::process::ExitCode;

use clap::Parser;

/// Keys, passphrases and plaintext live in this process's memory: no core dumps, and no
/// ptrace or /proc/PID/mem access by other (non-root) processes of the same user.
fn harden_process() {
    // SAFETY: prctl takes only integers here, and setrlimit reads the rlimit on this stack
    // frame without keeping the pointer.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
    }
}

fn main() -> ExitCode {
    harden_process();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let cli = tensorvault::cli::Cli::parse();
    if !cli.runs_a_daemon() {
        // Like any Unix tool, `tvault inspect ... | head` ends quietly when the reader
        // stops reading, instead of panicking on the closed pipe.
        // SAFETY: signal() with SIG_DFL installs no handler; nothing else runs yet.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match tensorvault::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", tensorvault::cli::error_message(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}
