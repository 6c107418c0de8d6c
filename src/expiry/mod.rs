//! Expiry: when entries stop being readable, and the timer wheel that reclaims
//! them.
//!
//! Deadlines are nanoseconds on the cache's [`Clock`] (`NEVER` for none). Each
//! entry has one deadline, which reads may move (time-to-idle, or an
//! [`Expiry`] that says so), and a cap a read may not move it past (its
//! time-to-live). Reads compare the deadline with the clock, so a reader never
//! sees an expired entry whether or not the wheel has run; the wheel only
//! reclaims memory, and learns of moved deadlines lazily, when it fires.

pub(crate) mod clock;
pub(crate) mod wheel;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use clock::{nanos, TICK_NANOS};
pub use clock::{Clock, MockClock};

/// "No deadline".
pub(crate) const NEVER: u64 = u64::MAX;

/// Computed lifetimes: how long an entry lives after it is created, updated or
/// read. Each method returns the entry's new remaining lifetime; `None` means
/// it never expires. The update and read methods receive the current remaining
/// lifetime and return it unchanged by default, so an implementation overrides
/// only the events it cares about.
///
/// The methods run on the calling thread with the entry's shard locked (for
/// writing on create and update, for reading on read), so they should be quick
/// and must not call back into the cache. A panic in one propagates to the
/// caller: the write that called it does not happen (but a load of the key
/// in flight is not cached, as after a write that lands: the write marked it
/// stale before it called the method), and the read that called it moves no
/// deadline.
///
/// ```
/// use std::time::Duration;
/// use larder::{Cache, Clock, Expiry};
///
/// /// Errors are cached briefly, good answers for a minute.
/// struct ByOutcome;
/// impl Expiry<u32, Result<String, String>> for ByOutcome {
///     fn expire_after_create(&self, _: &u32, v: &Result<String, String>) -> Option<Duration> {
///         Some(if v.is_ok() { Duration::from_secs(60) } else { Duration::from_secs(1) })
///     }
/// }
///
/// let (clock, time) = Clock::mock();
/// let cache = Cache::builder().max_capacity(100).expiry(ByOutcome).clock(clock).build().unwrap();
/// cache.insert(1, Ok("one".to_string()));
/// cache.insert(2, Err("timeout".to_string()));
/// time.advance(Duration::from_secs(2));
/// assert!(cache.get(&1).is_some());
/// assert!(cache.get(&2).is_none());
/// ```
pub trait Expiry<K, V>: Send + Sync + 'static {
    /// The lifetime of a new entry. The default is `None`: it never expires.
    fn expire_after_create(&self, key: &K, value: &V) -> Option<Duration> {
        let _ = (key, value);
        None
    }

    /// The lifetime after `value` replaces a live entry whose remaining
    /// lifetime is `current`. The default keeps `current`.
    fn expire_after_update(
        &self,
        key: &K,
        value: &V,
        current: Option<Duration>,
    ) -> Option<Duration> {
        let _ = (key, value);
        current
    }

    /// The lifetime after a read that found the entry with `current` remaining.
    /// The default keeps `current`.
    fn expire_after_read(&self, key: &K, value: &V, current: Option<Duration>) -> Option<Duration> {
        let _ = (key, value);
        current
    }
}

/// Settings for one insert, for [`Cache::insert_with`](crate::Cache::insert_with):
/// a time-to-live and tags.
///
/// ```
/// use std::time::Duration;
/// use larder::{EntryOptions, Tag};
///
/// let options = EntryOptions::new().ttl(Duration::from_secs(5)).tags(["team:7", "hot"]);
/// assert_eq!(options.time_to_live(), Some(Duration::from_secs(5)));
/// assert_eq!(options.tag_list(), &[Tag::from("team:7"), Tag::from("hot")]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "options do nothing until passed to a write; each setting returns the options to keep"]
pub struct EntryOptions {
    ttl: Option<Duration>,
    tags: crate::tags::Tags,
}

impl EntryOptions {
    /// No per-entry settings: the cache's own apply.
    ///
    /// ```
    /// let options = larder::EntryOptions::new();
    /// assert_eq!(options.time_to_live(), None);
    /// assert!(options.tag_list().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// This entry lives for `ttl` from now, whatever the cache's time-to-live
    /// or [`Expiry`] says: no read extends it (a time-to-idle, or an
    /// [`Expiry::expire_after_read`] shorter than what is left, still applies). Zero means the value
    /// is not cached at all; `Duration::MAX` means it never expires.
    ///
    /// ```
    /// use std::time::Duration;
    /// use larder::{Cache, Clock, EntryOptions};
    ///
    /// let (clock, time) = Clock::mock();
    /// let cache: Cache<u32, u32> = Cache::builder().max_capacity(10).clock(clock).build().unwrap();
    /// cache.insert_with(1, 1, EntryOptions::new().ttl(Duration::from_secs(5)));
    /// cache.insert_with(2, 2, EntryOptions::new().ttl(Duration::ZERO)); // not cached at all
    /// assert_eq!(cache.get(&2), None);
    /// time.advance(Duration::from_secs(4));
    /// assert_eq!(cache.get(&1), Some(1));
    /// time.advance(Duration::from_secs(1));
    /// assert_eq!(cache.get(&1), None);
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The per-entry time-to-live, if one was set.
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = larder::EntryOptions::new().ttl(Duration::from_secs(5));
    /// assert_eq!(options.time_to_live(), Some(Duration::from_secs(5)));
    /// ```
    pub fn time_to_live(&self) -> Option<Duration> {
        self.ttl
    }

    /// Adds tags to the entry, for [`Cache::invalidate_tag`](crate::Cache::invalidate_tag).
    /// Up to two tags are stored without an allocation of their own.
    ///
    /// ```
    /// use larder::{Cache, EntryOptions};
    ///
    /// let cache: Cache<&str, u32> = Cache::builder().max_capacity(10).build().unwrap();
    /// cache.insert_with("a", 1, EntryOptions::new().tags(["team:7"]).tags(["hot"]));
    /// cache.insert_with("b", 2, EntryOptions::new().tags(["team:8"]));
    /// cache.invalidate_tag("hot");
    /// assert_eq!(cache.get("a"), None);
    /// assert_eq!(cache.get("b"), Some(2));
    /// ```
    pub fn tags<T: Into<crate::Tag>>(mut self, tags: impl IntoIterator<Item = T>) -> Self {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// The tags added so far.
    ///
    /// ```
    /// use larder::{EntryOptions, Tag};
    /// let options = EntryOptions::new().tags(["a"]).tags(["b", "c"]);
    /// assert_eq!(options.tag_list(), &[Tag::from("a"), Tag::from("b"), Tag::from("c")]);
    /// ```
    pub fn tag_list(&self) -> &[crate::Tag] {
        &self.tags
    }
}

/// How a cache computes deadlines.
pub(crate) enum Rule<K, V> {
    Fixed { ttl: Option<u64>, tti: Option<u64> },
    Custom(Arc<dyn Expiry<K, V>>),
}

/// A cache's expiry: its clock and its rule.
pub(crate) struct Expiration<K, V> {
    pub(crate) clock: Clock,
    rule: Rule<K, V>,
    /// How long after its write an entry is due for a refresh by the next
    /// loading call that hits it (`refresh_after`); `NEVER` for none.
    refresh: u64,
}

/// An entry's deadline and the latest a read may move it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadlines {
    pub(crate) at: u64,
    pub(crate) cap: u64,
}

/// What a deadline leaves of the time from `now`.
fn remaining(at: u64, now: u64) -> Option<Duration> {
    (at != NEVER).then(|| Duration::from_nanos(at.saturating_sub(now)))
}

fn after(now: u64, d: Option<Duration>) -> u64 {
    d.map_or(NEVER, |d| now.saturating_add(nanos(d)))
}

impl<K: 'static, V: 'static> Expiration<K, V> {
    pub(crate) fn fixed(clock: Clock, ttl: Option<Duration>, tti: Option<Duration>) -> Self {
        Self {
            clock,
            rule: Rule::Fixed {
                ttl: ttl.map(nanos),
                tti: tti.map(nanos),
            },
            refresh: NEVER,
        }
    }

    pub(crate) fn custom(clock: Clock, expiry: Arc<dyn Expiry<K, V>>) -> Self {
        Self {
            clock,
            rule: Rule::Custom(expiry),
            refresh: NEVER,
        }
    }

    /// The same expiry, with entries due for a refresh `after` their write.
    pub(crate) fn refreshing(self, after: Option<Duration>) -> Self {
        Self {
            refresh: after.map_or(NEVER, nanos),
            ..self
        }
    }

    /// Whether loading calls refresh entries (so writes stamp their time).
    #[inline]
    pub(crate) fn refreshes(&self) -> bool {
        self.refresh != NEVER
    }

    /// Whether an entry written at `written` is due for a refresh at `now`.
    #[inline]
    pub(crate) fn refresh_due(&self, written: u64, now: u64) -> bool {
        now.saturating_sub(written) >= self.refresh
    }

    /// Whether reads may move deadlines (so `get` must ask).
    pub(crate) fn reads_move_deadlines(&self) -> bool {
        matches!(
            self.rule,
            Rule::Fixed { tti: Some(_), .. } | Rule::Custom(_)
        )
    }

    /// Whether a read can only move a deadline later: a time-to-idle moves it
    /// to `min(cap, now + idle)`, which never decreases as the clock runs,
    /// while an [`Expiry`] may answer a read with a shorter lifetime.
    pub(crate) fn reads_only_extend(&self) -> bool {
        matches!(self.rule, Rule::Fixed { .. })
    }

    /// Deadlines for a write at `now`. `current` is the live entry's deadline
    /// when this replaces one; `ttl` the insert's own time-to-live.
    pub(crate) fn on_write(
        &self,
        key: &K,
        value: &V,
        now: u64,
        current: Option<u64>,
        ttl: Option<Duration>,
    ) -> Deadlines {
        match &self.rule {
            Rule::Fixed { ttl: fixed, tti } => {
                let cap = match ttl {
                    Some(d) => after(now, Some(d)),
                    None => fixed.map_or(NEVER, |n| now.saturating_add(n)),
                };
                match tti {
                    Some(i) => Deadlines {
                        at: cap.min(now.saturating_add(*i)),
                        cap,
                    },
                    // Reads never move the deadline: no cap to keep.
                    None => Deadlines {
                        at: cap,
                        cap: NEVER,
                    },
                }
            }
            Rule::Custom(expiry) => {
                let lifetime = match (ttl, current) {
                    // The insert's own time-to-live is also the latest a read
                    // may move the deadline to.
                    (Some(d), _) => {
                        let at = after(now, Some(d));
                        return Deadlines { at, cap: at };
                    }
                    (None, None) => expiry.expire_after_create(key, value),
                    (None, Some(at)) => expiry.expire_after_update(key, value, remaining(at, now)),
                };
                Deadlines {
                    at: after(now, lifetime),
                    cap: NEVER,
                }
            }
        }
    }

    /// The deadline after a read at `now` of an entry with these deadlines, if
    /// the read moves it.
    pub(crate) fn on_read(&self, key: &K, value: &V, now: u64, d: Deadlines) -> Option<u64> {
        let at = match &self.rule {
            Rule::Fixed { tti: Some(i), .. } => {
                let at = d.cap.min(now.saturating_add(*i));
                // Less than a tick later: not worth a write to a line other
                // readers of a hot entry share. Nor less than 1/1024 of the
                // time-to-idle, which a short one needs: with a whole tick
                // (about a millisecond) a time-to-idle of 2 ms lost half its
                // length, and one below a tick was never extended at all.
                if at > d.at && at - d.at < TICK_NANOS.min(*i >> 10) {
                    return None;
                }
                at
            }
            Rule::Fixed { tti: None, .. } => return None,
            Rule::Custom(expiry) => after(
                now,
                expiry.expire_after_read(key, value, remaining(d.at, now)),
            )
            .min(d.cap),
        };
        (at != d.at).then_some(at)
    }
}

impl<K, V> fmt::Debug for Expiration<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Expiration");
        match &self.rule {
            Rule::Fixed { ttl, tti } => s.field("ttl_ns", ttl).field("tti_ns", tti),
            Rule::Custom(_) => s.field("expiry", &"custom"),
        };
        s.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(ttl: Option<u64>, tti: Option<u64>) -> Expiration<u8, u8> {
        Expiration::fixed(
            Clock::system(),
            ttl.map(Duration::from_secs),
            tti.map(Duration::from_secs),
        )
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn ttl_and_tti_combine_as_the_earlier() {
        let e = fixed(Some(10), Some(3));
        let d = e.on_write(&1, &1, 0, None, None);
        assert_eq!(
            d,
            Deadlines {
                at: 3 * S,
                cap: 10 * S
            }
        );
        // A read at 2 s moves the deadline to 5 s; at 9 s only to the cap.
        assert_eq!(e.on_read(&1, &1, 2 * S, d), Some(5 * S));
        assert_eq!(
            e.on_read(&1, &1, 1_000, d),
            None,
            "moved by less than a tick"
        );
        assert_eq!(
            e.on_read(
                &1,
                &1,
                9 * S,
                Deadlines {
                    at: 12 * S,
                    cap: 10 * S
                }
            ),
            Some(10 * S)
        );
    }

    #[test]
    fn per_entry_ttl_overrides_the_cache_ttl() {
        let e = fixed(Some(10), None);
        let d = e.on_write(&1, &1, 0, None, Some(Duration::from_secs(2)));
        assert_eq!(d.at, 2 * S);
        assert_eq!(
            e.on_read(&1, &1, S, d),
            None,
            "no time-to-idle: reads move nothing"
        );
    }

    #[test]
    fn huge_durations_saturate_to_never() {
        let e = fixed(Some(u64::MAX), None);
        assert_eq!(e.on_write(&1, &1, 5, None, None).at, NEVER);
        let e = fixed(None, None);
        assert_eq!(e.on_write(&1, &1, 5, None, Some(Duration::MAX)).at, NEVER);
        assert_eq!(
            e.on_write(&1, &1, u64::MAX - 1, None, Some(Duration::from_secs(1)))
                .at,
            NEVER
        );
    }

    struct Halves;
    impl Expiry<u8, u8> for Halves {
        fn expire_after_create(&self, _: &u8, v: &u8) -> Option<Duration> {
            (*v > 0).then(|| Duration::from_secs(u64::from(*v)))
        }
        fn expire_after_read(&self, _: &u8, _: &u8, current: Option<Duration>) -> Option<Duration> {
            current.map(|c| c / 2)
        }
    }

    #[test]
    fn custom_expiry_keeps_changes_or_clears() {
        let e: Expiration<u8, u8> = Expiration::custom(Clock::system(), Arc::new(Halves));
        assert!(e.reads_move_deadlines());
        let d = e.on_write(&1, &8, 0, None, None);
        assert_eq!(d.at, 8 * S);
        assert_eq!(e.on_read(&1, &8, 0, d), Some(4 * S));
        // The default update keeps the remaining lifetime.
        assert_eq!(e.on_write(&1, &9, 2 * S, Some(8 * S), None).at, 8 * S);
        // Zero from create: no deadline at all.
        assert_eq!(e.on_write(&1, &0, 0, None, None).at, NEVER);
    }
}
