//! Mount commands given any path (on the mount, in its store, on no mount), the caller's recent
//! denials in `tvault status`, and `tvault inspect` of a container file. Needs root and
//! /dev/fuse.

mod common;

use std::fs;

use common::mount::*;
use common::*;

const ALICE: u32 = 1001;
const BOB: u32 = 1002;

fn put_model(fx: &MountFixture) {
    let model = fx.path("model");
    fs::create_dir_all(&model).unwrap();
    let st = safetensors_bytes(&[("w", "F32", &[4, 4], 4)]);
    fs::write(model.join("model.safetensors"), st).unwrap();
    fs::write(model.join("config.json"), b"{}\n").unwrap();
    ok(&["put", s(&fx.store), s(&model), "--to", "alice"], "");
}

fn succeeds(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    stdout(out)
}

fn status_json(fx: &MountFixture, uid: u32, path: &std::path::Path) -> serde_json::Value {
    let out = fx.tvault_as(uid, &["status", s(path), "--json"], "");
    serde_json::from_str(&succeeds(&out)).expect("status json")
}

fn denials(status: &serde_json::Value) -> Vec<(String, String, String)> {
    status["denials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let text = |k: &str| d[k].as_str().unwrap().to_string();
            (text("op"), text("path"), text("reason"))
        })
        .collect()
}

#[test]
fn any_path_on_the_mount_or_in_its_store_names_the_mount() {
    let mut fx = MountFixture::new();
    put_model(&fx);
    fx.mount(&[]);
    let dir = fx.mnt.join("model");
    let file = dir.join("config.json");

    let out = fx.tvault_as(ALICE, &["unlock", s(&dir)], "pw-alice\n");
    assert!(
        succeeds(&out).contains(&format!("unlocked alice (uid 1001) on {}", s(&fx.mnt))),
        "{}",
        stdout(&out)
    );
    let status = status_json(&fx, ALICE, &file);
    assert_eq!(status["mountpoint"], s(&fx.mnt));
    assert_eq!(status["unlocked"][0]["user"], "alice");
    // A name not there yet is on the mount too.
    let status = status_json(&fx, ALICE, &dir.join("not/there/yet"));
    assert_eq!(status["mountpoint"], s(&fx.mnt));
    let out = fx.tvault_as(ALICE, &["lock", s(&file)], "");
    assert!(
        succeeds(&out).contains("locked alice on"),
        "{}",
        stdout(&out)
    );
    assert!(status_json(&fx, ALICE, &fx.mnt)["unlocked"]
        .as_array()
        .unwrap()
        .is_empty());

    // A path in the store names the mount that serves it, a container by its plaintext name.
    let container = fx.store.join("model/model.safetensors.tvlt");
    for path in [&fx.store, &container] {
        let status = status_json(&fx, 0, path);
        assert_eq!(status["mountpoint"], s(&fx.mnt), "{}", path.display());
    }
    let err = stderr(&fx.tvault_as(0, &["status", s(&fx.store.join(".tvault"))], ""));
    assert!(err.contains("tvault's own metadata"), "{err}");

    // inspect on the container says what it is, and what inspects it, store path or mount.
    let err = stderr(&fx.tvault_as(0, &["inspect", s(&container)], ""));
    assert!(
        err.contains("is an encrypted tensorvault container")
            && err.contains(&format!(
                "`tvault inspect {} model/model.safetensors --user NAME`",
                s(&fx.store)
            ))
            && err.contains(&format!(
                "`tvault inspect {}`",
                s(&fx.mnt.join("model/model.safetensors"))
            ))
            && !err.contains("header length"),
        "{err}"
    );

    // umount from inside the mount.
    let out = fx.tvault_as(0, &["umount", s(&dir)], "");
    assert!(succeeds(&out).contains("unmounted"), "{}", stdout(&out));
    assert!(!is_mounted(&fx.mnt));
}

#[test]
fn status_lists_the_callers_own_recent_denials_with_the_fix() {
    let mut fx = MountFixture::new();
    put_model(&fx);
    fx.mount(&[]);
    let dir = fx.mnt.join("model");
    let config = dir.join("config.json");
    let model = dir.join("model.safetensors");
    // alice is locked; bob has a keyring but no key slot.
    for _ in 0..3 {
        let out = fx.as_uid(ALICE, "cat", &[s(&config)], "");
        assert!(
            stderr(&out).contains("Permission denied"),
            "{}",
            stderr(&out)
        );
    }
    fx.unlock(BOB, "pw-bob");
    let out = fx.as_uid(BOB, "cat", &[s(&model)], "");
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );

    let alice = status_json(&fx, ALICE, &dir);
    assert_eq!(
        denials(&alice),
        [("open".into(), "model/config.json".into(), "locked".into())]
    );
    let d = &alice["denials"][0];
    assert_eq!(d["count"], 3);
    assert_eq!(d["words"], "your keyring is not unlocked on this mount");
    assert_eq!(d["fix"], format!("run `tvault unlock {}`", s(&fx.mnt)));
    assert!(d["time"].as_str().unwrap().ends_with('Z'));

    let bob = status_json(&fx, BOB, &model);
    assert_eq!(
        denials(&bob),
        [(
            "open".into(),
            "model/model.safetensors".into(),
            "no-key-slot".into()
        )]
    );
    let fix = bob["denials"][0]["fix"].as_str().unwrap();
    assert!(
        fix.contains(&format!(
            "`tvault grant {} model/model.safetensors bob --user THEIR-NAME`",
            s(&fx.store)
        )),
        "{fix}"
    );
    // root sees its own denials only (none), not the others'.
    assert!(denials(&status_json(&fx, 0, &fx.mnt)).is_empty());

    let text = succeeds(&fx.tvault_as(ALICE, &["status", s(&config)], ""));
    assert!(
        text.contains("denials:    1 recent for uid 1001")
            && text.contains(&format!("open {} (3 times)", s(&config)))
            && text.contains("locked: your keyring is not unlocked on this mount")
            && text.contains(&format!("fix: run `tvault unlock {}`", s(&fx.mnt)))
            && !text.contains("model.safetensors"),
        "{text}"
    );

    // The daemon log has each denial once, however often it was repeated.
    let log = fx.daemon_log();
    let line = "denied: uid 1001 open \"model/config.json\": locked";
    assert_eq!(log.matches(line).count(), 1, "{log}");
    assert_eq!(
        log.matches("denied: uid 1002 open \"model/model.safetensors\": no-key-slot")
            .count(),
        1,
        "{log}"
    );
}

#[test]
fn paths_on_no_mount_or_a_dead_one_say_what_to_do_once() {
    let mut fx = MountFixture::new();
    put_model(&fx);
    let nowhere = fx.path("model/config.json");
    for cmd in ["unlock", "lock", "status", "umount"] {
        let out = fx.tvault_as(ALICE, &[cmd, s(&nowhere)], "pw-alice\n");
        let err = stderr(&out);
        assert!(!out.status.success(), "{cmd}");
        assert_eq!(
            err.trim_end(),
            format!(
                "tvault: error: no tvault mount contains {}: mount the store with `tvault \
                 mount STORE MOUNTPOINT`, or give a path on a mount",
                s(&nowhere)
            ),
            "{cmd}"
        );
    }
    // A container outside any store: the command, with what to fill in.
    let copy = fx.path("copy.tvlt");
    fs::copy(fx.store.join("model/config.json.tvlt"), &copy).unwrap();
    let err = fails(&["inspect", s(&copy)], "");
    assert!(
        err.contains("is an encrypted tensorvault container")
            && err.contains("`tvault inspect STORE REL --user NAME`, where STORE is"),
        "{err}"
    );

    // A mount whose daemon was killed: named, with the way out, the OS error said once.
    fx.mount(&[]);
    let pid = fx.daemon_pid().unwrap();
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let start = std::time::Instant::now();
    let err = loop {
        let out = fx.tvault_as(0, &["status", s(&fx.mnt.join("model"))], "");
        let err = stderr(&out);
        if err.contains("does not answer") || start.elapsed().as_secs() > 10 {
            break err;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED).to_string();
    assert!(
        err.contains(&format!(
            "{} is a tvault mount but its daemon does not answer",
            s(&fx.mnt)
        )) && err.contains(&format!("`tvault umount {}`", s(&fx.mnt)))
            && err.matches(&refused).count() == 1,
        "{err}"
    );
    let out = fx.tvault_as(0, &["umount", s(&fx.mnt.join("model"))], "");
    assert!(succeeds(&out).contains("detached"), "{}", stdout(&out));
    assert!(!is_mounted(&fx.mnt));
}
