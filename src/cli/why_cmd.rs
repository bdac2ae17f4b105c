//! `tvault why PATH`: whether the calling uid can read and write a path on a mount and, if
//! not, why in words and what fixes it. The daemon decides (the same checks as lookup and
//! open); this file only words the answer. Exit status 0 when the caller can read.

use std::io::Write;
use std::path::Path;

use serde_json::Value;

use super::explain::{explain, Context};
use super::resolve::resolve;
use super::CliResult;
use crate::control::{self, Request};

const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Adds `words` and `fix` to a refused verdict of the daemon's reply.
fn word(
    verdict: &mut Value,
    mountpoint: &Path,
    store: &str,
    rel: &str,
    uid: u32,
    user: Option<&str>,
) {
    if verdict["allowed"].as_bool() == Some(true) {
        return;
    }
    let reason = verdict["reason"].as_str().unwrap_or("error").to_string();
    let detail = verdict["detail"].as_str().map(str::to_string);
    let owner = verdict["owner"].as_str().map(str::to_string);
    let cx = Context {
        mountpoint,
        store,
        rel,
        uid,
        user,
        detail: detail.as_deref(),
        owner: owner.as_deref(),
    };
    let explained = match reason.as_str() {
        "read-only" => super::explain::Explained {
            words: "the mount is read-only".to_string(),
            fix: "remount without --read-only to write".to_string(),
        },
        "not-found" => super::explain::Explained {
            words: "nothing is there".to_string(),
            fix: "check the path".to_string(),
        },
        _ => explain(&reason, &cx),
    };
    verdict["words"] = Value::from(explained.words);
    verdict["fix"] = Value::from(explained.fix);
}

pub fn why(path: &Path, as_json: bool) -> CliResult {
    let on = resolve(path)?;
    let mut reply = control::call(
        &on.mountpoint,
        &Request::Why {
            path: on.rel.clone(),
        },
        REQUEST_TIMEOUT,
    )?;
    let uid = reply["uid"].as_u64().unwrap_or(0) as u32;
    let user = reply["user"].as_str().map(str::to_string);
    let store = reply["store"].as_str().unwrap_or("STORE").to_string();
    for access in ["read", "write"] {
        let verdict = &mut reply[access];
        word(
            verdict,
            &on.mountpoint,
            &store,
            &on.rel,
            uid,
            user.as_deref(),
        );
        if verdict.get("also").is_some() {
            let also = &mut verdict["also"];
            word(also, &on.mountpoint, &store, &on.rel, uid, user.as_deref());
        }
    }
    let can_read = reply["read"]["allowed"].as_bool() == Some(true);
    if as_json {
        if let Value::Object(map) = &mut reply {
            map.remove("ok");
        }
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        let who = match &user {
            Some(name) => format!("{name} (uid {uid})"),
            None => format!("uid {uid}"),
        };
        println!(
            "{}: {} on the mount, for {who}",
            path.display(),
            reply["kind"].as_str().unwrap_or("entry")
        );
        for (access, verb) in [("read", "read"), ("write", "write")] {
            let v = &reply[access];
            if v["allowed"].as_bool() == Some(true) {
                println!("  can {verb}");
                continue;
            }
            println!(
                "  cannot {verb}: {}\n    fix: {}",
                v["words"].as_str().unwrap_or("refused"),
                v["fix"].as_str().unwrap_or("")
            );
            if let Some(also) = v.get("also") {
                println!(
                    "    and also: {}\n    fix: {}",
                    also["words"].as_str().unwrap_or("refused"),
                    also["fix"].as_str().unwrap_or("")
                );
            }
        }
    }
    if !can_read {
        std::io::stdout().flush()?;
        std::process::exit(1);
    }
    Ok(())
}
