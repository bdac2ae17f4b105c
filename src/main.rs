use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let cli = tensorvault::cli::Cli::parse();
    match tensorvault::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut msg = format!("tvault: error: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                let text = cause.to_string();
                // thiserror's "{path}: {source}" messages already include the cause.
                if !msg.ends_with(&text) {
                    msg.push_str(&format!(": {text}"));
                }
                source = cause.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
