//! `tvault fsck`: check a store for damage, with or without a user's key.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use super::{passphrase, CliResult, PassphraseArgs};
use crate::fsck::{self, Options, Report};
use crate::keyring::KeyringError;

/// Exit status when the store has errors.
pub const EXIT_DAMAGED: i32 = 1;
/// Exit status when the check could not run (not a store, unknown user, wrong passphrase).
pub const EXIT_CANNOT_CHECK: i32 = 2;

#[derive(Args)]
#[command(after_help = "\
Without --user, fsck needs no passphrase and checks the structure of everything: \
.tvault/store.json, every keyring file, and every .tvlt container (header, key slots, and \
that the file is exactly as long as its header and chunk table imply). With --user it also \
authenticates the key slot, header MAC and every chunk of each file that user holds a key \
slot for; files the user cannot read are listed as skipped.

Each problem is printed with its path, as \"error: PATH: ...\" or \"warning: PATH: ...\". \
Warnings (leftover temporary files, key slots or policies naming someone who is not a user \
of the store, names tvault ignores) do not make a store unclean.

Exit status:
  0  the store is clean (possibly with warnings)
  1  at least one error: a damaged or inconsistent file, keyring or configuration
  2  the check could not run (not a store, no such user, wrong passphrase, usage error)")]
pub struct FsckArgs {
    store: PathBuf,
    /// Also authenticate every chunk of every file this user holds a key slot for (asks the
    /// user's passphrase)
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    #[command(flatten)]
    pass: PassphraseArgs,
    /// Delete leftover temporary files (drafts of interrupted writes) not modified in the
    /// last two minutes. Do not use while a mount of the store may have a file open for
    /// writing for longer than that
    #[arg(long)]
    remove_temp: bool,
    /// Print a JSON report
    #[arg(long)]
    json: bool,
}

/// Prints `err` the way `main` prints errors and exits with [`EXIT_CANNOT_CHECK`].
fn cannot_check(err: Box<dyn std::error::Error>) -> ! {
    // Whatever was printed before comes first; a failed flush has nowhere to be reported.
    let _ = std::io::stdout().flush();
    eprintln!("{}", super::error_message(err.as_ref()));
    std::process::exit(EXIT_CANNOT_CHECK)
}

pub fn fsck(args: &FsckArgs) -> CliResult {
    let private = args
        .user
        .as_deref()
        .map(|name| unlock(&args.store, name, &args.pass).unwrap_or_else(|e| cannot_check(e)));
    let options = Options {
        verify_as: args.user.as_deref().zip(private.as_ref()),
        remove_temp: args.remove_temp,
    };
    let report = fsck::check(&args.store, &options).unwrap_or_else(|e| cannot_check(e.into()));
    if args.json {
        print_json(&args.store, args.user.as_deref(), &report)?;
    } else {
        print_text(&args.store, args.user.as_deref(), &report)?;
    }
    if report.is_clean() {
        Ok(())
    } else {
        let _ = std::io::stdout().flush();
        std::process::exit(EXIT_DAMAGED)
    }
}

/// The user's private key. The keyring is read directly, so that a store whose
/// store.json is damaged can still be checked with a key.
fn unlock(
    store: &Path,
    name: &str,
    pass: &PassphraseArgs,
) -> Result<crate::crypto::PrivateKey, Box<dyn std::error::Error>> {
    let keyring = fsck::read_keyring(store, name)?;
    if !keyring.has_private_key() {
        return Err(KeyringError::NoPrivateKey(name.to_string()).into());
    }
    let phrase = passphrase::read(
        &format!("Passphrase for {name}"),
        pass.passphrase_file.as_deref(),
        false,
    )?;
    Ok(keyring.unlock(&phrase)?)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn print_text(store: &Path, user: Option<&str>, report: &Report) -> CliResult {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for p in &report.problems {
        writeln!(
            out,
            "{}: {}: {}",
            p.severity.as_str(),
            p.path.display(),
            p.message
        )?;
    }
    if let Some(user) = user {
        for path in &report.skipped {
            writeln!(out, "skipped: {}: {user} holds no key slot", path.display())?;
        }
    }
    let mut summary = format!(
        "{}: {}, {} checked",
        store.display(),
        plural(report.containers, "file", "files"),
        plural(report.keyrings, "keyring", "keyrings"),
    );
    if let Some(user) = user {
        summary.push_str(&format!(
            "; {} authenticated as {user}, {} skipped",
            report.verified.len(),
            report.skipped.len()
        ));
    }
    let (errors, warnings) = (report.errors(), report.warnings());
    summary.push_str(&match (errors, warnings) {
        (0, 0) => ": clean".to_string(),
        (0, w) => format!(": clean, {}", plural(w, "warning", "warnings")),
        (e, w) => format!(
            ": {}, {}",
            plural(e, "error", "errors"),
            plural(w, "warning", "warnings")
        ),
    });
    writeln!(out, "{summary}")?;
    Ok(())
}

fn print_json(store: &Path, user: Option<&str>, report: &Report) -> CliResult {
    let paths =
        |v: &[PathBuf]| -> Vec<String> { v.iter().map(|p| p.display().to_string()).collect() };
    let problems: Vec<_> = report
        .problems
        .iter()
        .map(|p| {
            json!({
                "severity": p.severity.as_str(),
                "kind": p.kind.as_str(),
                "path": p.path.display().to_string(),
                "message": p.message,
            })
        })
        .collect();
    let body = json!({
        "store": store.display().to_string(),
        "clean": report.is_clean(),
        "errors": report.errors(),
        "warnings": report.warnings(),
        "files": report.containers,
        "keyrings": report.keyrings,
        "user": user,
        "verified": paths(&report.verified),
        "skipped": paths(&report.skipped),
        "removed": paths(&report.removed),
        "problems": problems,
    });
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    serde_json::to_writer_pretty(&mut out, &body)?;
    writeln!(out)?;
    Ok(())
}
