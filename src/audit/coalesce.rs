//! Counting instead of writing: repeated denials, and a line budget per uid.
//!
//! Denials and integrity failures are the entries any local user can cause at will (nothing is
//! allowed on the strength of them, so they are written on a best-effort basis). Written one
//! line each, a uid looping `open()` filled a disk in seconds, and with rotation pushed every
//! other user's entries out of the kept files. So, for these entries only:
//!
//! - **Coalescing.** An event is written at once and opens a window of [`Limits::window`] for
//!   its key: the event without `pid`, `process` and `exe`. Identical events inside the window
//!   are counted; when it ends, the count is written as one line with `count`, `first` and
//!   `last` (and the process of the last one), and the window starts again. A window with no
//!   repeats closes.
//! - **A budget per uid.** Each uid has a token bucket of [`Limits::burst`] lines, refilled at
//!   one per [`Limits::refill`]; every best-effort line of that uid (first, counted or
//!   summary) takes a token. An event that finds neither an open window nor a token is added to
//!   the uid's tally, which is written as one `suppressed` line with its count once a window
//!   has passed and a token is there. Lines that are due come first: while one of them waits
//!   for a token, that uid's new events are tallied instead of written.
//! - **Nothing is dropped.** At close every count still pending is written, whatever the
//!   budget, and a line that cannot be written goes back to its count or the tally.
//!
//! So over T seconds one uid's best-effort lines number at most `burst + T / refill`, plus one
//! per open window at close (at most [`Limits::windows_per_uid`]), and every event is in
//! exactly one line's count. A crash loses the counts not yet written (at most one window).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use super::line::Span;
use super::{Decision, Event, EventKind};

/// Reason code of a `suppressed` line.
pub const SUPPRESSED_REASON: &str = "over-budget";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long identical events are counted before their count is written.
    pub window: Duration,
    /// Lines a uid may write at once.
    pub burst: u32,
    /// One more line is allowed per this much time.
    pub refill: Duration,
    /// Open windows (keys being counted) at most, over all uids.
    pub windows: usize,
    /// Open windows at most per uid.
    pub windows_per_uid: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        window: Duration::from_secs(10),
        burst: 60,
        refill: Duration::from_secs(5),
        windows: 4096,
        windows_per_uid: 64,
    };
}

/// Whether `event` is written on a best-effort basis, and so coalesced and budgeted.
pub fn is_best_effort(event: &Event) -> bool {
    event.decision == Some(Decision::Deny) || event.kind == EventKind::IntegrityFailure
}

/// What identical means: everything but the process, which may differ from one repeat to
/// the next.
fn key_of(event: &Event) -> Event {
    Event {
        pid: None,
        process: None,
        exe: None,
        ..event.clone()
    }
}

/// Repeats counted in a window, with the process of the last one.
struct Repeats {
    span: Span,
    pid: Option<u32>,
    process: Option<String>,
    exe: Option<String>,
}

struct Window {
    uid: Option<u32>,
    ends: Instant,
    repeats: Option<Repeats>,
}

impl Window {
    fn repeat(&mut self, event: &Event, time: SystemTime) {
        match &mut self.repeats {
            Some(r) => r.span.add(time),
            None => {
                self.repeats = Some(Repeats {
                    span: Span::one(time),
                    pid: None,
                    process: None,
                    exe: None,
                })
            }
        }
        if let Some(r) = &mut self.repeats {
            r.pid = event.pid;
            r.process.clone_from(&event.process);
            r.exe.clone_from(&event.exe);
        }
    }
}

/// Events of one uid that got no line of their own.
struct Tally {
    span: Span,
    user: Option<String>,
    since: Instant,
}

struct Budget {
    tokens: u32,
    /// When `tokens` was last brought up to date.
    at: Instant,
    windows: usize,
    /// A due line of this uid is waiting for a token.
    waiting: bool,
    tally: Option<Tally>,
}

impl Budget {
    fn refill(&mut self, now: Instant, limits: &Limits) {
        let step = limits.refill.as_nanos().max(1);
        let earned = now.saturating_duration_since(self.at).as_nanos() / step;
        if earned == 0 {
            return;
        }
        if u128::from(self.tokens) + earned >= u128::from(limits.burst) {
            self.tokens = limits.burst;
            self.at = now;
        } else {
            // earned < burst here, so both conversions are exact.
            let earned = earned as u32;
            self.tokens += earned;
            self.at += limits.refill * earned;
        }
    }

    fn add_to_tally(&mut self, event: &Event, time: SystemTime, now: Instant) {
        match &mut self.tally {
            Some(t) => {
                t.span.add(time);
                if event.user.is_some() {
                    t.user.clone_from(&event.user);
                }
            }
            None => {
                self.tally = Some(Tally {
                    span: Span::one(time),
                    user: event.user.clone(),
                    since: now,
                })
            }
        }
    }
}

/// What [`Coalescer::admit`] decided for an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write the event's line now, then call [`Coalescer::opened`] (or
    /// [`Coalescer::unwritten`] if the write failed).
    Write,
    /// Counted in a window or the uid's tally; its line comes later.
    Counted,
}

/// A counted line to write now.
pub struct Due {
    /// The window it came from; `None` for a `suppressed` line.
    key: Option<Event>,
    uid: Option<u32>,
    pub event: Event,
    pub span: Span,
}

pub struct Coalescer {
    limits: Limits,
    windows: HashMap<Event, Window>,
    budgets: HashMap<Option<u32>, Budget>,
    /// Events counted rather than written as lines of their own, since open.
    folded: u64,
}

impl Coalescer {
    pub fn new(limits: Limits) -> Coalescer {
        Coalescer {
            limits,
            windows: HashMap::new(),
            budgets: HashMap::new(),
            folded: 0,
        }
    }

    pub fn folded(&self) -> u64 {
        self.folded
    }

    fn budget(&mut self, uid: Option<u32>, now: Instant) -> &mut Budget {
        let limits = self.limits;
        let budget = self.budgets.entry(uid).or_insert_with(|| Budget {
            tokens: limits.burst,
            at: now,
            windows: 0,
            waiting: false,
            tally: None,
        });
        budget.refill(now, &limits);
        budget
    }

    /// Decides whether a best-effort event gets a line now.
    pub fn admit(&mut self, event: &Event, now: Instant, time: SystemTime) -> Admit {
        if let Some(window) = self.windows.get_mut(&key_of(event)) {
            window.repeat(event, time);
            self.folded += 1;
            return Admit::Counted;
        }
        let limits = self.limits;
        let room = self.windows.len() < limits.windows;
        let budget = self.budget(event.uid, now);
        if !budget.waiting && budget.tokens > 0 && room && budget.windows < limits.windows_per_uid {
            budget.tokens -= 1;
            return Admit::Write;
        }
        budget.add_to_tally(event, time, now);
        self.folded += 1;
        Admit::Counted
    }

    /// The line of an admitted event was written: count its repeats from now on.
    pub fn opened(&mut self, event: &Event, now: Instant) {
        let window = Window {
            uid: event.uid,
            ends: now + self.limits.window,
            repeats: None,
        };
        if self.windows.insert(key_of(event), window).is_none() {
            self.budget(event.uid, now).windows += 1;
        }
    }

    /// The line of an admitted event could not be written: it joins the uid's tally.
    pub fn unwritten(&mut self, event: &Event, now: Instant, time: SystemTime) {
        self.budget(event.uid, now).add_to_tally(event, time, now);
        self.folded += 1;
    }

    /// The counted lines to write now, each holding a token of its uid (with `all`: every
    /// pending count, for close, budget or not). Windows that ended without repeats close.
    pub fn take_due(&mut self, now: Instant, all: bool) -> Vec<Due> {
        let limits = self.limits;
        // (first time, uid, window key or None for the tally)
        let mut candidates: Vec<(SystemTime, Option<u32>, Option<Event>)> = Vec::new();
        let mut closed = Vec::new();
        for (key, window) in &self.windows {
            if !all && window.ends > now {
                continue;
            }
            match &window.repeats {
                Some(r) => candidates.push((r.span.first, window.uid, Some(key.clone()))),
                None if !all => closed.push(key.clone()),
                None => {}
            }
        }
        for key in closed {
            if let Some(window) = self.windows.remove(&key) {
                let budget = self.budget(window.uid, now);
                budget.windows = budget.windows.saturating_sub(1);
            }
        }
        for (uid, budget) in &mut self.budgets {
            budget.waiting = false;
            if let Some(t) = &budget.tally {
                if all || t.since + limits.window <= now {
                    candidates.push((t.span.first, *uid, None));
                }
            }
        }
        candidates.sort_by_key(|(first, _, _)| *first);
        let mut due = Vec::new();
        for (_, uid, key) in candidates {
            let budget = self.budget(uid, now);
            if !all {
                if budget.tokens == 0 {
                    budget.waiting = true;
                    continue;
                }
                budget.tokens -= 1;
            }
            match key {
                None => {
                    if let Some(t) = budget.tally.take() {
                        due.push(Due {
                            key: None,
                            uid,
                            event: suppressed_event(uid, t.user, &limits),
                            span: t.span,
                        });
                    }
                }
                Some(key) => {
                    let Some(window) = self.windows.get_mut(&key) else {
                        continue;
                    };
                    window.ends = now + limits.window;
                    if let Some(r) = window.repeats.take() {
                        let event = Event {
                            pid: r.pid,
                            process: r.process,
                            exe: r.exe,
                            ..key.clone()
                        };
                        due.push(Due {
                            key: Some(key),
                            uid,
                            event,
                            span: r.span,
                        });
                    }
                }
            }
        }
        for budget in self.budgets.values_mut() {
            budget.refill(now, &limits);
        }
        self.budgets.retain(|_, b| {
            b.windows > 0 || b.tally.is_some() || b.waiting || b.tokens < limits.burst
        });
        due
    }

    /// A due line could not be written: its count goes back where it came from.
    pub fn restore(&mut self, due: Due, now: Instant) {
        if let Some(window) = due.key.as_ref().and_then(|k| self.windows.get_mut(k)) {
            match &mut window.repeats {
                Some(r) => r.span.merge(&due.span),
                None => {
                    window.repeats = Some(Repeats {
                        span: due.span,
                        pid: due.event.pid,
                        process: due.event.process.clone(),
                        exe: due.event.exe.clone(),
                    })
                }
            }
            return;
        }
        let budget = self.budget(due.uid, now);
        match &mut budget.tally {
            Some(t) => t.span.merge(&due.span),
            None => {
                budget.tally = Some(Tally {
                    span: due.span,
                    user: due.event.user.clone(),
                    since: now,
                })
            }
        }
    }
}

fn suppressed_event(uid: Option<u32>, user: Option<String>, limits: &Limits) -> Event {
    let mut event = Event::new(EventKind::Suppressed)
        .deny(SUPPRESSED_REASON)
        .detail(format!(
            "denials and integrity failures of this uid not written one by one: over its budget \
             of {} lines plus one per {} s, or the log could not be written",
            limits.burst,
            limits.refill.as_secs_f64()
        ));
    event.uid = uid;
    event.user = user;
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Limits = Limits {
        window: Duration::from_secs(10),
        burst: 3,
        refill: Duration::from_secs(5),
        windows: 100,
        windows_per_uid: 50,
    };

    fn denial(uid: u32, path: &str, pid: u32) -> Event {
        Event::new(EventKind::Open)
            .uid(uid)
            .path(path)
            .pid(pid)
            .deny("no-keyring")
    }

    /// Every event is either written on admission or in exactly one due line's count.
    fn accounted(written: u64, due: &[Due]) -> u64 {
        written + due.iter().map(|d| d.span.count).sum::<u64>()
    }

    #[test]
    fn repeats_are_counted_then_written_as_one_line() {
        let mut c = Coalescer::new(SMALL);
        let t0 = Instant::now();
        let time = SystemTime::now();
        let first = denial(7, "a", 1);
        assert_eq!(c.admit(&first, t0, time), Admit::Write);
        c.opened(&first, t0);
        for i in 0..1000 {
            let at = time + Duration::from_millis(i);
            assert_eq!(
                c.admit(&denial(7, "a", 100 + i as u32), t0, at),
                Admit::Counted
            );
        }
        assert!(c.take_due(t0 + Duration::from_secs(9), false).is_empty());
        let due = c.take_due(t0 + Duration::from_secs(10), false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].span.count, 1000);
        assert_eq!(due[0].span.first, time);
        assert_eq!(due[0].span.last, time + Duration::from_millis(999));
        assert_eq!(due[0].event.pid, Some(1099), "the last repeat's process");
        assert_eq!(due[0].event.path.as_deref(), Some("a"));
        assert_eq!(accounted(1, &due), 1001);
        assert_eq!(c.folded(), 1000);
        // The window goes on while repeats come, and closes after one without any.
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(c.admit(&first, t1, time), Admit::Counted);
        assert_eq!(c.take_due(t0 + Duration::from_secs(20), false).len(), 1);
        assert!(c.take_due(t0 + Duration::from_secs(30), false).is_empty());
        assert_eq!(
            c.admit(&first, t0 + Duration::from_secs(31), time),
            Admit::Write
        );
    }

    #[test]
    fn other_keys_and_allowed_events_are_not_merged() {
        let mut c = Coalescer::new(SMALL);
        let now = Instant::now();
        let time = SystemTime::now();
        for e in [denial(7, "a", 1), denial(7, "b", 1), denial(8, "a", 1)] {
            assert_eq!(c.admit(&e, now, time), Admit::Write);
            c.opened(&e, now);
        }
        assert!(!is_best_effort(&Event::new(EventKind::Open).uid(7).allow()));
        assert!(!is_best_effort(&Event::new(EventKind::Mount)));
        assert!(is_best_effort(&Event::new(EventKind::IntegrityFailure)));
        assert!(is_best_effort(
            &Event::new(EventKind::UnlockFailed).deny("x")
        ));
    }

    #[test]
    fn a_uid_over_its_budget_is_tallied_and_others_are_not_affected() {
        let mut c = Coalescer::new(SMALL);
        let t0 = Instant::now();
        let time = SystemTime::now();
        let mut written = 0u64;
        // 10,000 distinct paths from uid 7 in the first second.
        for i in 0..10_000 {
            let e = denial(7, &format!("p{i}"), 1);
            if c.admit(&e, t0, time) == Admit::Write {
                c.opened(&e, t0);
                written += 1;
            }
        }
        assert_eq!(written, 3, "the burst");
        // Another uid still has its whole budget.
        let bob = denial(8, "x", 2);
        assert_eq!(c.admit(&bob, t0, time), Admit::Write);
        c.opened(&bob, t0);
        // Simulate 60 s of ticks, with uid 7 flooding on: lines stay within the budget.
        let mut all_due = Vec::new();
        for s in 1..=60u64 {
            let now = t0 + Duration::from_secs(s);
            for i in 0..1000 {
                let e = denial(7, &format!("q{s}-{i}"), 1);
                if c.admit(&e, now, time) == Admit::Write {
                    c.opened(&e, now);
                    written += 1;
                }
            }
            all_due.extend(
                c.take_due(now, false)
                    .into_iter()
                    .filter(|d| d.uid == Some(7)),
            );
        }
        let lines = written + all_due.len() as u64;
        assert!(lines <= 3 + 60 / 5, "{lines} lines in 60 s");
        assert!(all_due
            .iter()
            .any(|d| d.event.kind == EventKind::Suppressed));
        // At close the rest comes out regardless of tokens: nothing is lost.
        all_due.extend(
            c.take_due(t0 + Duration::from_secs(61), true)
                .into_iter()
                .filter(|d| d.uid == Some(7)),
        );
        assert_eq!(accounted(written, &all_due), 10_000 + 60_000);
        let summary = all_due
            .iter()
            .find(|d| d.event.kind == EventKind::Suppressed)
            .unwrap();
        assert_eq!(summary.event.uid, Some(7));
        assert_eq!(summary.event.reason.as_deref(), Some(SUPPRESSED_REASON));
        assert_eq!(summary.event.decision, Some(Decision::Deny));
    }

    #[test]
    fn a_failed_line_goes_back_to_its_count() {
        let mut c = Coalescer::new(SMALL);
        let t0 = Instant::now();
        let time = SystemTime::now();
        let e = denial(7, "a", 1);
        assert_eq!(c.admit(&e, t0, time), Admit::Write);
        c.unwritten(&e, t0, time);
        assert_eq!(c.admit(&e, t0, time), Admit::Write, "no window was opened");
        c.opened(&e, t0);
        assert_eq!(c.admit(&e, t0, time), Admit::Counted);
        assert_eq!(c.admit(&e, t0, time), Admit::Counted);
        let t10 = t0 + Duration::from_secs(10);
        let due = c.take_due(t10, false);
        assert_eq!(
            accounted(0, &due),
            3,
            "two repeats and the unwritten first one"
        );
        // The writes fail: the counts go back, and come out at close.
        for d in due {
            c.restore(d, t10);
        }
        assert_eq!(
            c.admit(&e, t0 + Duration::from_secs(11), time),
            Admit::Counted
        );
        let due = c.take_due(t0 + Duration::from_secs(12), true);
        assert_eq!(accounted(0, &due), 4);
    }

    #[test]
    fn memory_is_bounded() {
        let limits = Limits {
            windows: 10,
            windows_per_uid: 4,
            burst: 1000,
            ..SMALL
        };
        let mut c = Coalescer::new(limits);
        let now = Instant::now();
        let time = SystemTime::now();
        for uid in 0..10u32 {
            for i in 0..100 {
                let e = denial(uid, &format!("p{i}"), 1);
                if c.admit(&e, now, time) == Admit::Write {
                    c.opened(&e, now);
                }
            }
        }
        assert_eq!(c.windows.len(), 10);
        assert!(c.budgets.values().all(|b| b.windows <= 4));
        assert_eq!(c.folded(), 1000 - 10);
    }
}
