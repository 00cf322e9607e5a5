//! Statistics: latency percentiles of one case from cheap timestamps, a case bracketed by raw
//! ping-pong medians taken just before and after it, medians and ratios; and how many samples a
//! run takes (full, or a smoke run's tiny counts).
//!
//! # Smoke runs
//! `SHMQ_BENCH_SMOKE=1 cargo bench --bench NAME` skips criterion and runs the report with every
//! count cut down ([`sample_count`]): each case is spawned, run and reported, and the raw results
//! are written, in seconds. Its numbers mean nothing (the results file says `"smoke": true`); it
//! checks the harness, not the queue.

use std::env;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// Environment variable that turns a bench run into a smoke run (see the module docs).
pub const SMOKE_ENV: &str = "SHMQ_BENCH_SMOKE";

/// Whether this is a smoke run: `SHMQ_BENCH_SMOKE` set to anything but empty or `0`.
pub fn smoke_mode() -> bool {
    static SMOKE: OnceLock<bool> = OnceLock::new();
    *SMOKE.get_or_init(|| env::var(SMOKE_ENV).is_ok_and(|v| !v.is_empty() && v != "0"))
}

/// `full` samples, or a thousandth of them (at least 50) in a smoke run.
pub fn sample_count(full: usize) -> usize {
    if smoke_mode() {
        (full / 1000).max(50).min(full)
    } else {
        full
    }
}

/// Latency distribution of one case.
#[derive(Clone, Copy, Debug)]
pub struct Percentiles {
    /// 50th percentile, interpolated: the mean of the samples from the 45th to the 55th
    /// percentile. The clock advances in steps (10 ns on this AMD VM), so a plain median jumps by
    /// a step (10% of a raw round trip); the band's mix of neighbouring steps resolves below it.
    pub median: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Slowest sample.
    pub max: Duration,
}

/// Time `n` calls of `f` one by one, after `n / 10` (at least 100) untimed warm-up calls. Samples
/// are differences of consecutive [`ticks`], so each includes one clock read and the loop (see
/// [`timer_overhead`]).
pub fn latency_percentiles(f: &mut dyn FnMut(), n: usize) -> Percentiles {
    assert!(n > 0);
    let ns_per_tick = ns_per_tick();
    for _ in 0..(n / 10).max(100) {
        f();
    }
    // Not zero: a zeroed Vec gets fresh untouched pages, and their faults would land in the samples.
    let mut samples = vec![u64::MAX; n];
    let mut prev = ticks();
    for sample in &mut samples {
        f();
        let now = ticks();
        *sample = now.wrapping_sub(prev);
        prev = now;
    }
    samples.sort_unstable();
    let to_duration = |ticks: f64| Duration::from_nanos((ticks * ns_per_tick).round() as u64);
    let at = |q: f64| to_duration(samples[((n as f64 * q).ceil() as usize).clamp(1, n) - 1] as f64);
    let (lo, hi) = (n * 45 / 100, n * 55 / 100);
    let band = &samples[lo..hi.max(lo + 1)];
    Percentiles {
        median: to_duration(band.iter().sum::<u64>() as f64 / band.len() as f64),
        p99: at(0.99),
        p999: at(0.999),
        max: at(1.0),
    }
}

/// A cheap timestamp: the TSC on `x86_64` (about 12 ns here against 30 ns for `Instant::now()`;
/// invariant, and only ever compared on the one pinned CPU), nanoseconds elsewhere.
#[inline]
fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC exists on every x86_64 CPU and has no preconditions.
        unsafe { std::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Nanoseconds per [`ticks`], measured once against `Instant` over 50 ms.
fn ns_per_tick() -> f64 {
    static NS_PER_TICK: OnceLock<f64> = OnceLock::new();
    *NS_PER_TICK.get_or_init(|| {
        let (start, start_ticks) = (Instant::now(), ticks());
        thread::sleep(Duration::from_millis(50));
        let (end, end_ticks) = (Instant::now(), ticks());
        (end - start).as_nanos() as f64 / end_ticks.wrapping_sub(start_ticks) as f64
    })
}

/// Median cost [`latency_percentiles`] adds to every sample (timing an empty closure).
pub fn timer_overhead() -> Duration {
    latency_percentiles(&mut || {}, sample_count(100_000)).median
}

/// Round trips per raw ping-pong median taken by [`bracket_with_raw`].
pub const RAW_BRACKET_ROUND_TRIPS: usize = 20_000;

/// A case measured between two short raw ping-pong medians.
#[derive(Clone, Copy, Debug)]
pub struct Bracketed {
    /// The case.
    pub case: Percentiles,
    /// Raw round-trip median just before the case.
    pub raw_before: Duration,
    /// Raw round-trip median just after the case.
    pub raw_after: Duration,
}

impl Bracketed {
    /// The case's median over the mean of the two raw medians.
    pub fn ratio(&self) -> f64 {
        ratio(self.case.median, (self.raw_before + self.raw_after) / 2)
    }

    /// Whether the raw medians differ by more than 25%: the cores moved during the case.
    pub fn unstable(&self) -> bool {
        let (lo, hi) = (
            self.raw_before.min(self.raw_after),
            self.raw_before.max(self.raw_after),
        );
        ratio(hi, lo) > 1.25
    }
}

/// `a / b`.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// The median of `values` (the upper one of an even count); `values` must not be empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
