//! Owner names to uids: the mount shows a file's owner (a store user) as the uid that
//! user's keyring registers. Looked up on every `getattr`, so remembered for a few seconds
//! (a user added, removed or re-registered shows within that long).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::{Store, NOBODY_UID};
use crate::sync::lock;

const REMEMBER: Duration = Duration::from_secs(5);
/// Bounds the map: names come from the store, which a store writer fills.
const MAX_NAMES: usize = 4096;

#[derive(Default)]
pub(super) struct Owners(Mutex<HashMap<String, (u32, Instant)>>);

impl Owners {
    /// The uid of owner `name` (`None`: root).
    pub(super) fn uid(&self, store: &Store, name: Option<&str>) -> u32 {
        let Some(name) = name else { return 0 };
        let now = Instant::now();
        if let Some(&(uid, at)) = lock(&self.0).get(name) {
            if now.duration_since(at) < REMEMBER {
                return uid;
            }
        }
        // Read without the lock held: it is a file read.
        let uid = store.user(name).map_or(NOBODY_UID, |k| k.uid);
        let mut map = lock(&self.0);
        if map.len() >= MAX_NAMES {
            map.retain(|_, &mut (_, at)| now.duration_since(at) < REMEMBER);
            if map.len() >= MAX_NAMES {
                map.clear();
            }
        }
        map.insert(name.to_string(), (uid, now));
        uid
    }
}
