//! Time for expiry: the system's cheap clock (quanta reads the CPU's timestamp
//! counter where it is reliable) or a mock moved by hand in tests. Times are
//! nanoseconds since the clock was made; [`ticks`] is the one place they become
//! timer-wheel ticks.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A wheel tick is 2^20 ns, about 1.05 ms.
const TICK_BITS: u32 = 20;
pub(crate) const TICK_NANOS: u64 = 1 << TICK_BITS;

/// The tick a time falls in. Deadlines are filed under the tick they fall in
/// too, so the wheel hands out every entry due by `now` when it reaches
/// `ticks(now)`, with the few due later in that same tick, which the store
/// files again for the next tick.
pub(crate) fn ticks(nanos: u64) -> u64 {
    nanos >> TICK_BITS
}

/// Nanoseconds in a duration, saturating at `u64::MAX` (which means "never").
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The time source of a cache's expiry.
///
/// [`Clock::system`] is the default. [`Clock::mock`] gives a clock that stands
/// still until its [`MockClock`] moves it, so tests of expiry never sleep:
///
/// ```
/// use std::time::Duration;
/// use larder::{Cache, Clock};
///
/// let (clock, time) = Clock::mock();
/// let cache: Cache<u32, u32> = Cache::builder()
///     .max_capacity(10)
///     .time_to_live(Duration::from_secs(5))
///     .clock(clock)
///     .build()
///     .unwrap();
/// cache.insert(1, 1);
/// time.advance(Duration::from_secs(4));
/// assert_eq!(cache.get(&1), Some(1));
/// time.advance(Duration::from_secs(1));
/// assert_eq!(cache.get(&1), None);
/// ```
#[derive(Clone)]
pub struct Clock {
    inner: quanta::Clock,
    origin: u64,
    /// A coarse clock reads the process-wide time the ticker thread keeps.
    coarse: Option<&'static AtomicU64>,
}

impl Clock {
    /// The system's monotonic clock, read on every use (the CPU's timestamp
    /// counter where it is reliable, else the operating system's monotonic
    /// clock). [`Clock::coarse`] makes reads cheaper still.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder()
    ///     .max_capacity(100)
    ///     .time_to_live(Duration::from_secs(60))
    ///     .clock(larder::Clock::system()) // the default
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 1);
    /// assert_eq!(cache.get(&1), Some(1));
    /// ```
    pub fn system() -> Self {
        let inner = quanta::Clock::new();
        let origin = inner.raw();
        Self {
            inner,
            origin,
            coarse: None,
        }
    }

    /// The system's monotonic clock as of the last half millisecond: a read
    /// is one relaxed atomic load instead of a timestamp-counter read, which
    /// makes `get` on a cache with expiry measurably cheaper (README, Expiry).
    ///
    /// The time comes from one process-wide thread, `larder-clock`, started
    /// by the first coarse clock and running for the life of the process; it
    /// stores the time every 0.5 ms (a sleep, which overshoots: about 0.9 ms
    /// was the longest gap measured). Entries may therefore live up to about a
    /// millisecond (plus however long that thread goes unscheduled) past
    /// their deadline, within a tick of the timer wheel. If the
    /// thread cannot be started, this falls back to [`Clock::system`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder()
    ///     .max_capacity(100)
    ///     .time_to_live(Duration::from_secs(60))
    ///     .clock(larder::Clock::coarse())
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 1);
    /// assert_eq!(cache.get(&1), Some(1));
    /// ```
    pub fn coarse() -> Self {
        let Some(ticker) = ticker() else {
            return Self::system();
        };
        Self {
            inner: quanta::Clock::new(),
            origin: ticker.load(Ordering::Relaxed),
            coarse: Some(ticker),
        }
    }

    /// A clock that only moves when the returned [`MockClock`] advances it.
    ///
    /// ```
    /// use std::time::Duration;
    /// let (clock, time) = larder::Clock::mock();
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder()
    ///     .max_capacity(100)
    ///     .time_to_idle(Duration::from_secs(10))
    ///     .clock(clock)
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 1);
    /// time.advance(Duration::from_secs(10));
    /// assert_eq!(cache.get(&1), None);
    /// ```
    pub fn mock() -> (Self, MockClock) {
        let (inner, mock) = quanta::Clock::mock();
        let origin = inner.raw();
        (
            Self {
                inner,
                origin,
                coarse: None,
            },
            MockClock(Arc::new(Hand {
                mock,
                advanced: AtomicU64::new(0),
            })),
        )
    }

    /// Nanoseconds since the clock was made.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match self.coarse {
            None => self.inner.delta_as_nanos(self.origin, self.inner.raw()),
            Some(ticker) => ticker.load(Ordering::Relaxed).saturating_sub(self.origin),
        }
    }
}

/// How often the ticker thread stores the time.
const TICKER_PERIOD: Duration = Duration::from_micros(500);

/// The process-wide coarse time (nanoseconds since the ticker started), or
/// `None` if its thread could not be started.
fn ticker() -> Option<&'static AtomicU64> {
    static TICKER: OnceLock<Option<&'static AtomicU64>> = OnceLock::new();
    *TICKER.get_or_init(|| {
        let time: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
        let clock = quanta::Clock::new();
        let start = clock.raw();
        std::thread::Builder::new()
            .name("larder-clock".into())
            .spawn(move || loop {
                time.store(clock.delta_as_nanos(start, clock.raw()), Ordering::Relaxed);
                std::thread::sleep(TICKER_PERIOD);
            })
            .ok()
            .map(|_| time)
    })
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clock")
            .field("now_ns", &self.now())
            .finish()
    }
}

/// The hand that moves a [`Clock::mock`] clock. Clones move the same clock.
///
/// ```
/// use std::time::Duration;
/// let (clock, time) = larder::Clock::mock();
/// let hand = time.clone(); // moves the same clock
/// let cache: larder::Cache<u32, u32> = larder::Cache::builder()
///     .max_capacity(100)
///     .time_to_live(Duration::from_secs(2))
///     .clock(clock)
///     .build()
///     .unwrap();
/// cache.insert(1, 1);
/// time.advance(Duration::from_secs(1));
/// hand.advance(Duration::from_secs(1));
/// assert_eq!(cache.get(&1), None);
/// ```
#[derive(Clone, Debug)]
pub struct MockClock(Arc<Hand>);

/// What the clones of a [`MockClock`] share.
#[derive(Debug)]
struct Hand {
    mock: Arc<quanta::Mock>,
    /// Nanoseconds the hands have moved the clock, at most `LATEST_NANOS`:
    /// each hand claims its step here before it moves the clock by it, so
    /// that hands racing to the limit share what room is left.
    advanced: AtomicU64,
}

impl MockClock {
    /// Moves the clock forward by `by`, up to [`MockClock::LATEST`]: time
    /// stops there (it never wraps, and never reaches the deadline that
    /// stands for "never expires"), however many clones move it at once.
    ///
    /// ```
    /// let (clock, time) = larder::Clock::mock();
    /// time.advance(std::time::Duration::from_millis(1500));
    /// time.advance(std::time::Duration::MAX); // saturates
    /// ```
    pub fn advance(&self, by: Duration) {
        let by = nanos(by);
        let hand = &self.0.advanced;
        let mut advanced = hand.load(Ordering::Relaxed);
        let step = loop {
            let step = by.min(Self::LATEST_NANOS - advanced);
            match hand.compare_exchange_weak(
                advanced,
                advanced + step,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break step,
                Err(now) => advanced = now,
            }
        };
        self.0.mock.increment(step);
    }

    /// The latest a mock clock reads: about 292 years after it was made.
    ///
    /// ```
    /// use std::time::Duration;
    /// let (clock, time) = larder::Clock::mock();
    /// let cache: larder::Cache<u32, u32> =
    ///     larder::Cache::builder().max_capacity(10).clock(clock).build().unwrap();
    /// cache.insert_with(1, 1, larder::EntryOptions::new().ttl(Duration::MAX)); // never expires
    /// time.advance(larder::MockClock::LATEST);
    /// time.advance(Duration::from_secs(1)); // time stops at LATEST
    /// assert_eq!(cache.get(&1), Some(1));
    /// ```
    pub const LATEST: Duration = Duration::from_nanos(Self::LATEST_NANOS);
    const LATEST_NANOS: u64 = u64::MAX / 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_time_moves_only_when_advanced() {
        let (clock, time) = Clock::mock();
        let start = clock.now();
        assert_eq!(clock.now(), start);
        time.advance(Duration::from_millis(1500));
        assert_eq!(clock.now() - start, 1_500_000_000);
    }

    #[test]
    fn racing_hands_stop_the_clock_at_the_latest() {
        // Hands that each found the room before moving the clock used to
        // add it twice over, carrying the clock past LATEST (and with a
        // third hand, past u64::MAX): this failed on every run.
        for _ in 0..1_000 {
            let (clock, time) = Clock::mock();
            time.advance(MockClock::LATEST / 2);
            // A spinning start: both hands move within nanoseconds.
            let ready = AtomicU64::new(0);
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        ready.fetch_add(1, Ordering::SeqCst);
                        while ready.load(Ordering::SeqCst) < 2 {
                            std::hint::spin_loop();
                        }
                        time.advance(Duration::MAX);
                    });
                }
            });
            assert_eq!(clock.now(), MockClock::LATEST_NANOS);
            time.advance(Duration::from_secs(1));
            assert_eq!(clock.now(), MockClock::LATEST_NANOS);
        }
    }

    #[test]
    fn system_time_moves_forward() {
        let clock = Clock::system();
        let a = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(clock.now() > a);
    }

    #[test]
    fn coarse_time_moves_forward_in_steps() {
        let clock = Clock::coarse();
        let a = clock.now();
        // The clock's thread stores every half millisecond, when it runs.
        let mut b = clock.now();
        for _ in 0..5_000 {
            if b > a {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            b = clock.now();
        }
        assert!(b > a, "{a} then {b}");
        assert!(b - a < 1_000_000_000, "{a} then {b}");
    }

    #[test]
    fn ticks_round_down_and_durations_saturate() {
        assert_eq!(ticks((1 << TICK_BITS) - 1), 0);
        assert_eq!(ticks(1 << TICK_BITS), 1);
        assert_eq!(ticks(u64::MAX), u64::MAX >> TICK_BITS);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        assert_eq!(nanos(Duration::from_secs(1)), 1_000_000_000);
    }
}
