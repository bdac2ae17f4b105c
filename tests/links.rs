//! Symbolic links through a real mount: made, read, moved and removed by an unlocked user;
//! trees with relative links copied with `cp -a` and `tar`; a Hugging Face hub cache loaded
//! through its `snapshots/REV/FILE -> ../../blobs/HASH` links. The daemon never follows a
//! link: the kernel resolves it, and each file reached is decided under its own path.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::mount::*;
use common::*;
use sha2::{Digest, Sha256};

const ALICE: u32 = 1001;
const BOB: u32 = 1002;
/// Has no keyring in the store.
const EVE: u32 = 1003;

/// Runs `program args` as `uid` and returns its stdout, failing the test if it fails.
fn ok_as(fx: &MountFixture, uid: u32, program: &str, args: &[&str]) -> String {
    let out = fx.as_uid(uid, program, args, "");
    assert!(
        out.status.success(),
        "{program} {args:?} as {uid}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn world_readable(path: &Path) {
    let status = Command::new("chmod")
        .args(["-R", "a+rX", s(path)])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn ln_s_readlink_lstat_mv_rm_and_who_may_read_through_a_link() {
    let mut fx = MountFixture::new();
    let data = pseudo_random(100_000, 7);
    let src = fx.plain_file("data.bin", &data);
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    let mnt = fx.mnt.clone();
    let m = |p: &str| s(&mnt.join(p)).to_string();
    ok_as(&fx, ALICE, "mkdir", &[&m("d")]);
    ok_as(&fx, ALICE, "cp", &[s(&src), &m("d/f")]);
    ok_as(&fx, ALICE, "ln", &["-s", "f", &m("d/lf")]);
    ok_as(&fx, ALICE, "ln", &["-s", "d", &m("dirlink")]);
    ok_as(&fx, ALICE, "ln", &["-s", "nowhere", &m("d/dangling")]);

    assert_eq!(ok_as(&fx, ALICE, "readlink", &[&m("d/lf")]), "f\n");
    assert_eq!(
        ok_as(&fx, ALICE, "stat", &["-c", "%F %s %a", &m("d/lf")]),
        "symbolic link 1 777\n"
    );
    assert_eq!(
        ok_as(&fx, ALICE, "stat", &["-L", "-c", "%F %s", &m("d/lf")]),
        "regular file 100000\n"
    );
    let through = fx.as_uid(ALICE, "cat", &[&m("dirlink/lf")], "");
    assert!(through.status.success(), "{}", stderr(&through));
    assert_eq!(through.stdout, data, "read through two links");
    let mut listed: Vec<_> = ok_as(&fx, ALICE, "ls", &[&m("dirlink/")])
        .lines()
        .map(str::to_string)
        .collect();
    listed.sort();
    assert_eq!(listed, ["dangling", "f", "lf"]);
    assert!(ok_as(&fx, ALICE, "ls", &["-l", &m("d")]).contains("lf -> f"));
    // A dangling link reads back; what it points to does not exist.
    assert_eq!(
        ok_as(&fx, ALICE, "readlink", &[&m("d/dangling")]),
        "nowhere\n"
    );
    let gone = fx.as_uid(ALICE, "cat", &[&m("d/dangling")], "");
    assert!(stderr(&gone).contains("No such file"), "{}", stderr(&gone));
    // In the store: one small regular file per link, its target in the clear.
    let stored = fs::read(fx.store.join("d/lf.tvln")).unwrap();
    assert!(stored.starts_with(b"TVLN\x01\x05alice") && stored.ends_with(b"\x01\x00f"));
    assert!(!fs::symlink_metadata(fx.store.join("d/lf.tvln"))
        .unwrap()
        .file_type()
        .is_symlink());

    // Targets are no secret: bob (no key slot), eve (no keyring) and a locked user read
    // them, but opening the file through the link is decided as opening the file.
    let lock = fx.tvault_as(BOB, &["lock", s(&fx.mnt)], "");
    assert!(lock.status.success(), "{}", stderr(&lock));
    for uid in [BOB, EVE] {
        assert_eq!(ok_as(&fx, uid, "readlink", &[&m("d/lf")]), "f\n");
        let denied = fx.as_uid(uid, "cat", &[&m("d/lf")], "");
        assert!(
            stderr(&denied).contains("Permission denied"),
            "uid {uid}: {}",
            stderr(&denied)
        );
    }
    fx.unlock(BOB, "pw-bob");
    let denied = fx.as_uid(BOB, "cat", &[&m("dirlink/lf")], "");
    assert!(
        stderr(&denied).contains("Permission denied"),
        "{}",
        stderr(&denied)
    );

    // mv and rm act on the link, never on its target.
    ok_as(&fx, ALICE, "mv", &[&m("d/lf"), &m("lf2")]);
    assert_eq!(ok_as(&fx, ALICE, "readlink", &[&m("lf2")]), "f\n");
    assert!(fx.store.join("lf2.tvln").is_file() && !fx.store.join("d/lf.tvln").exists());
    ok_as(&fx, ALICE, "rm", &[&m("lf2"), &m("d/dangling")]);
    ok_as(&fx, ALICE, "rm", &[&m("dirlink")]);
    assert_eq!(ok_as(&fx, ALICE, "ls", &[&m("d")]), "f\n");
    assert!(fx.store.join("d/f.tvlt").is_file(), "the target stays");
    // ln -sf replaces a file by a link; links survive a remount.
    ok_as(&fx, ALICE, "ln", &["-s", "d/f", &m("again")]);
    ok_as(&fx, ALICE, "cp", &[s(&src), &m("plain")]);
    ok_as(&fx, ALICE, "ln", &["-sf", "d/f", &m("plain")]);
    assert_eq!(
        ok_as(&fx, ALICE, "stat", &["-c", "%F", &m("plain")]),
        "symbolic link\n"
    );
    assert!(!fx.store.join("plain.tvlt").exists());
    fx.unmount();
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    assert_eq!(ok_as(&fx, ALICE, "readlink", &[&m("again")]), "d/f\n");
    let after = fx.as_uid(ALICE, "cat", &[&m("plain")], "");
    assert_eq!(after.stdout, data, "{}", stderr(&after));
    let audit = fs::read_to_string(host_log(&fx.store)).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"event\":\"symlink\"") && l.contains("\"target\":\"nowhere\"")),
        "symlinks are recorded with their targets"
    );
}

/// A source tree with relative links (to a file, up a level, to a directory, dangling).
fn tree_with_links(root: &Path) -> Vec<u8> {
    let model = safetensors_bytes(&[("w", "F32", &[300, 200], 4)]);
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::write(root.join("a/model.safetensors"), &model).unwrap();
    fs::write(root.join("a/b/notes.txt"), b"notes\n").unwrap();
    fs::write(root.join("a/b/c/deep.bin"), pseudo_random(70_000, 3)).unwrap();
    symlink("../model.safetensors", root.join("a/b/model")).unwrap();
    symlink("b/c", root.join("a/deep")).unwrap();
    symlink("c/deep.bin", root.join("a/b/deep.bin")).unwrap();
    symlink("missing/file", root.join("a/dangling")).unwrap();
    world_readable(root);
    model
}

#[test]
fn cp_a_and_tar_of_a_tree_with_relative_links_copy_it_exactly() {
    let mut fx = MountFixture::new();
    let src = fx.path("src");
    let model = tree_with_links(&src);
    // Link times as `cp -a` must carry them over (lutimes on the mount).
    let old = "200001020304.05";
    let touch = Command::new("touch")
        .args(["-h", "-t", old, s(&src.join("a/b/model"))])
        .status()
        .unwrap();
    assert!(touch.success());
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let copy = fx.mnt.join("copy");
    let cp = fx.as_uid(ALICE, "cp", &["-a", s(&src), s(&copy)], "");
    assert!(cp.status.success(), "cp -a: {}", stderr(&cp));
    assert_eq!(stderr(&cp), "", "cp -a said something");
    // Modes are kept, and everything copied (links too) is alice's.
    for (rel, shown) in [
        ("a/b/notes.txt", "644 1001 regular file"),
        ("a/b", "755 1001 directory"),
        ("a/b/model", "777 1001 symbolic link"),
    ] {
        let st = ok_as(&fx, ALICE, "stat", &["-c", "%a %u %F", s(&copy.join(rel))]);
        assert_eq!(st.trim(), shown, "{rel}");
    }
    let diff = fx.as_uid(
        ALICE,
        "diff",
        &["-r", "--no-dereference", s(&src), s(&copy)],
        "",
    );
    assert!(diff.status.success(), "{}{}", stdout(&diff), stderr(&diff));
    let mtime = |p: &Path| {
        ok_as(&fx, ALICE, "stat", &["-c", "%Y", s(p)])
            .trim()
            .to_string()
    };
    assert_eq!(
        mtime(&copy.join("a/b/model")),
        mtime(&src.join("a/b/model")),
        "link times preserved"
    );
    // Through the copied links, as alice.
    let via = fx.as_uid(ALICE, "cat", &[s(&copy.join("a/b/model"))], "");
    assert_eq!(via.stdout, model, "{}", stderr(&via));
    let deep = fx.as_uid(ALICE, "cat", &[s(&copy.join("a/deep/deep.bin"))], "");
    assert_eq!(deep.stdout, fs::read(src.join("a/b/c/deep.bin")).unwrap());
    // The administrator's chown -R gives the links away too.
    ok(&["chown", s(&fx.store), "copy", "bob", "-R"], "");
    let link = fs::read(fx.store.join("copy/a/b/model.tvln")).unwrap();
    let link = tensorvault::store::Link::decode(&link).unwrap();
    assert_eq!(link.own.owner.as_deref(), Some("bob"));
    assert_eq!(link.target, b"../model.safetensors");
    // tar x (links, then their times) lands the same tree.
    let archive = fx.path("tree.tar");
    let tar = Command::new("tar")
        .args(["-C", s(&src), "-cf", s(&archive), "a"])
        .status()
        .unwrap();
    assert!(tar.success());
    fs::set_permissions(&archive, fs::Permissions::from_mode(0o644)).unwrap();
    ok_as(&fx, ALICE, "mkdir", &[s(&fx.mnt.join("untar"))]);
    ok_as(
        &fx,
        ALICE,
        "tar",
        &["-C", s(&fx.mnt.join("untar")), "-xf", s(&archive)],
    );
    let diff = fx.as_uid(
        ALICE,
        "diff",
        &[
            "-r",
            "--no-dereference",
            s(&src.join("a")),
            s(&fx.mnt.join("untar/a")),
        ],
        "",
    );
    assert!(diff.status.success(), "{}{}", stdout(&diff), stderr(&diff));
}

const REV: &str = "0123456789abcdef0123456789abcdef01234567";

/// A Hugging Face hub cache of model `org/tiny` under `hub`, as `huggingface_hub` lays it
/// out: content in `blobs/SHA256`, the revision's files as links to them, `refs/main`.
fn hf_cache(hub: &Path) -> Vec<u8> {
    let repo = hub.join("models--org--tiny");
    let snapshot = repo.join("snapshots").join(REV);
    fs::create_dir_all(&snapshot).unwrap();
    fs::create_dir_all(repo.join("blobs")).unwrap();
    fs::create_dir_all(repo.join("refs")).unwrap();
    let model = safetensors_bytes(&[
        ("embeddings.weight", "F32", &[5, 8], 4),
        ("encoder.weight", "F32", &[512, 256], 4),
        ("encoder.bias", "F16", &[256], 2),
    ]);
    let files: [(&str, &[u8]); 4] = [
        ("model.safetensors", &model),
        (
            "config.json",
            br#"{"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16, "vocab_size": 5}"#,
        ),
        (
            "tokenizer.json",
            br#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [{"id": 0, "content": "[UNK]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null, "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "hello": 1, "tensor": 2, "vault": 3, "world": 4}, "unk_token": "[UNK]"}}"#,
        ),
        (
            "tokenizer_config.json",
            br#"{"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}"#,
        ),
    ];
    for (name, bytes) in files {
        let hash = hex::encode(Sha256::digest(bytes));
        fs::write(repo.join("blobs").join(&hash), bytes).unwrap();
        symlink(format!("../../blobs/{hash}"), snapshot.join(name)).unwrap();
    }
    fs::write(repo.join("refs/main"), REV).unwrap();
    world_readable(hub);
    model
}

const LOAD_SAFETENSORS: &str = r#"
import sys
from safetensors.numpy import load_file
mine, theirs = load_file(sys.argv[1]), load_file(sys.argv[2])
assert mine.keys() == theirs.keys(), (mine.keys(), theirs.keys())
for k in mine:
    assert mine[k].dtype == theirs[k].dtype and mine[k].shape == theirs[k].shape, k
    assert mine[k].tobytes() == theirs[k].tobytes(), k
print(len(mine), "tensors equal")
"#;

const LOAD_TRANSFORMERS: &str = r#"
import sys, transformers
hub = sys.argv[1]
config = transformers.AutoConfig.from_pretrained("org/tiny", cache_dir=hub, local_files_only=True)
tok = transformers.AutoTokenizer.from_pretrained("org/tiny", cache_dir=hub, local_files_only=True)
print(config.model_type, config.hidden_size, tok("hello tensor vault")["input_ids"])
"#;

#[test]
fn a_hugging_face_hub_cache_copied_with_cp_a_loads_through_its_links() {
    let mut fx = MountFixture::new();
    let src = fx.path("hub");
    let model = hf_cache(&src);
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let hub = fx.mnt.join("hub");
    let cp = fx.as_uid(ALICE, "cp", &["-a", s(&src), s(&hub)], "");
    assert!(cp.status.success(), "cp -a: {}", stderr(&cp));
    assert_eq!(stderr(&cp), "", "cp -a said something");
    let rel = PathBuf::from("models--org--tiny/snapshots")
        .join(REV)
        .join("model.safetensors");
    let link = hub.join(&rel);
    assert!(ok_as(&fx, ALICE, "readlink", &[s(&link)]).starts_with("../../blobs/"));
    let out = fx.python_as(ALICE, LOAD_SAFETENSORS, &[s(&link), s(&src.join(&rel))]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "3 tensors equal\n");
    // The blob is stored encrypted, once: the snapshot holds only a link.
    let stored = fx.store.join("hub/models--org--tiny/snapshots").join(REV);
    assert!(stored.join("model.safetensors.tvln").is_file());
    // The directory's `.tvault-dir` beside them is no blob.
    let blobs: Vec<_> = fs::read_dir(fx.store.join("hub/models--org--tiny/blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tvlt"))
        .map(|p| fs::read(p).unwrap())
        .collect();
    assert_eq!(blobs.len(), 4);
    assert!(blobs.iter().all(|b| !contains_run(b, &model, 64)));
    // Bob holds no key slot: he sees the layout, not the weights (safetensors would call
    // any open error "No such file", so a plain open shows the errno).
    fx.unlock(BOB, "pw-bob");
    let code =
        "import sys\ntry:\n open(sys.argv[1], 'rb')\nexcept PermissionError:\n print('denied')";
    let out = fx.python_as(BOB, code, &[s(&link)]);
    assert_eq!(stdout(&out), "denied\n", "{}", stderr(&out));

    // scripts/setup.sh installs transformers (without torch) in the test venv.
    let py = python();
    let has_transformers = Command::new(&py)
        .args(["-c", "import transformers"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_transformers,
        "{py} has no transformers: run scripts/setup.sh"
    );
    // A home of alice's own: the hub library looks for a token there.
    let home = fx.path("home");
    fs::create_dir(&home).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o777)).unwrap();
    let env = [format!("HOME={}", s(&home)), "HF_HUB_OFFLINE=1".to_string()];
    let out = fx.as_uid(
        ALICE,
        "env",
        &[&env[0], &env[1], &py, "-c", LOAD_TRANSFORMERS, s(&hub)],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "bert 8 [1, 2, 3]\n");
}
