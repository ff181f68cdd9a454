//! The limits of one endpoint that keep a teacher within what its server takes: how many
//! requests are in flight ([`AdaptiveConcurrency`], AIMD below the server's slots) and how fast
//! they start ([`RateLimiter`], requests- and tokens-per-minute buckets plus a cool-down after a
//! 429). Used by [`super::openai::OpenAiTeacher`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Adaptive concurrency (the dynamic batch size)

/// AIMD concurrency limit: `on_congestion` halves it (at most once per 500 ms, so one burst of
/// 429s counts once), `on_success` adds `1/limit` (≈ +1 per window of successes).
#[derive(Debug)]
pub struct AdaptiveConcurrency {
    state: Mutex<AcState>,
    max: usize,
    notify: tokio::sync::Notify,
}

#[derive(Debug)]
struct AcState {
    limit: f64,
    in_flight: usize,
    last_decrease: Option<Instant>,
}

/// Held while a request is in flight.
#[derive(Debug)]
pub struct ConcurrencyPermit<'a> {
    ac: &'a AdaptiveConcurrency,
}

impl Drop for ConcurrencyPermit<'_> {
    fn drop(&mut self) {
        {
            let mut s = self.ac.state.lock().unwrap_or_else(|p| p.into_inner());
            s.in_flight -= 1;
        }
        self.ac.notify.notify_waiters();
    }
}

impl AdaptiveConcurrency {
    pub fn new(initial: usize, max: usize) -> Self {
        let max = max.max(1);
        AdaptiveConcurrency {
            state: Mutex::new(AcState {
                limit: initial.clamp(1, max) as f64,
                in_flight: 0,
                last_decrease: None,
            }),
            max,
            notify: tokio::sync::Notify::new(),
        }
    }

    pub fn limit(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).limit.floor() as usize
    }

    pub fn in_flight(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).in_flight
    }

    pub async fn acquire(&self) -> ConcurrencyPermit<'_> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if (s.in_flight as f64) < s.limit.floor() {
                    s.in_flight += 1;
                    return ConcurrencyPermit { ac: self };
                }
            }
            notified.await;
        }
    }

    pub fn on_success(&self) {
        let grew = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let before = s.limit.floor();
            s.limit = (s.limit + 1.0 / s.limit).min(self.max as f64);
            s.limit.floor() > before
        };
        if grew {
            self.notify.notify_waiters();
        }
    }

    pub fn on_congestion(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if s.last_decrease.is_some_and(|t| now.duration_since(t) < Duration::from_millis(500)) {
            return;
        }
        s.last_decrease = Some(now);
        s.limit = (s.limit / 2.0).max(1.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limiting

#[derive(Debug)]
struct Bucket {
    rate_per_sec: f64,
    capacity: f64,
    level: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_minute: f64, capacity: f64) -> Self {
        let capacity = capacity.max(1.0);
        Bucket { rate_per_sec: per_minute / 60.0, capacity, level: capacity, last: Instant::now() }
    }
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + dt * self.rate_per_sec).min(self.capacity);
        self.last = now;
    }
    /// How long until `cost` can be taken (costs above the capacity need a full bucket and
    /// leave it in debt).
    fn wait_for(&self, cost: f64) -> Duration {
        let need = cost.min(self.capacity);
        if self.level >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.level) / self.rate_per_sec)
        }
    }
}

/// Requests-per-minute and tokens-per-minute token buckets plus a global cool-down (set by 429s).
/// Waiters are served in FIFO order.
#[derive(Debug)]
pub struct RateLimiter {
    turn: tokio::sync::Mutex<()>,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    rpm: Option<Bucket>,
    tpm: Option<Bucket>,
    cooldown_until: Option<Instant>,
}

impl RateLimiter {
    pub fn new(rpm: Option<f64>, rpm_burst: f64, tpm: Option<f64>, tpm_burst: Option<f64>) -> Self {
        RateLimiter {
            turn: tokio::sync::Mutex::new(()),
            state: Mutex::new(LimiterState {
                rpm: rpm.map(|r| Bucket::new(r, rpm_burst)),
                tpm: tpm.map(|t| Bucket::new(t, tpm_burst.unwrap_or(t / 6.0))),
                cooldown_until: None,
            }),
        }
    }

    /// Wait for one request slot and `est_tokens` tokens.
    pub async fn acquire(&self, est_tokens: u64) {
        let _turn = self.turn.lock().await;
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let mut w =
                    s.cooldown_until.map(|c| c.saturating_duration_since(now)).unwrap_or_default();
                if let Some(b) = s.rpm.as_mut() {
                    b.refill(now);
                    w = w.max(b.wait_for(1.0));
                }
                if let Some(b) = s.tpm.as_mut() {
                    b.refill(now);
                    w = w.max(b.wait_for(est_tokens as f64));
                }
                if w.is_zero() {
                    if let Some(b) = s.rpm.as_mut() {
                        b.level -= 1.0;
                    }
                    if let Some(b) = s.tpm.as_mut() {
                        b.level -= est_tokens as f64;
                    }
                    return;
                }
                w
            };
            // Re-check at least every 250 ms so a new cool-down is noticed.
            tokio::time::sleep(wait.min(Duration::from_millis(250))).await;
        }
    }

    /// After a response: replace the estimate by the actual token count.
    pub fn settle(&self, est_tokens: u64, actual_tokens: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = s.tpm.as_mut() {
            b.level = (b.level + est_tokens as f64 - actual_tokens as f64).min(b.capacity);
        }
    }

    /// Pause every request for `d` (after a 429).
    pub fn cool_down(&self, d: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let until = Instant::now() + d;
        s.cooldown_until = Some(s.cooldown_until.map_or(until, |c| c.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn aimd_shrinks_and_grows() {
        let ac = AdaptiveConcurrency::new(8, 8);
        ac.on_congestion();
        assert_eq!(ac.limit(), 4);
        ac.on_congestion(); // within 500 ms: one burst counts once
        assert_eq!(ac.limit(), 4);
        for _ in 0..30 {
            ac.on_success();
        }
        assert_eq!(ac.limit(), 8);
        let p1 = ac.acquire().await;
        assert_eq!(ac.in_flight(), 1);
        drop(p1);
        assert_eq!(ac.in_flight(), 0);
    }

    #[tokio::test]
    async fn concurrency_limit_blocks_until_release() {
        let ac = Arc::new(AdaptiveConcurrency::new(1, 1));
        let p = ac.acquire().await;
        let ac2 = ac.clone();
        let h = tokio::spawn(async move {
            let _p = ac2.acquire().await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!h.is_finished());
        drop(p);
        tokio::time::timeout(Duration::from_secs(2), h).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn tpm_bucket_uses_estimates_then_actual_usage() {
        // 6000 tokens/min = 100/s, bucket of 100.
        let lim = RateLimiter::new(None, 1.0, Some(6000.0), Some(100.0));
        let t0 = Instant::now();
        lim.acquire(100).await; // the full bucket
        lim.settle(100, 10); // the answer used 10: 90 come back
        lim.acquire(100).await; // needs 10 more: ~0.1 s
        let dt = t0.elapsed().as_secs_f64();
        assert!((0.05..0.5).contains(&dt), "{dt}");
        lim.acquire(100).await; // without a refund: ~1 s
        let dt2 = t0.elapsed().as_secs_f64() - dt;
        assert!((0.8..1.6).contains(&dt2), "{dt2}");
        // A request larger than the bucket waits for a full bucket, then goes into debt.
        let big = RateLimiter::new(None, 1.0, Some(6000.0), Some(100.0));
        big.acquire(150).await;
        let t1 = Instant::now();
        big.acquire(1).await; // 50 of debt + 1 token: ~0.5 s at 100/s
        let waited = t1.elapsed().as_secs_f64();
        assert!((0.4..1.2).contains(&waited), "{waited}");
    }

    #[tokio::test]
    async fn rpm_bucket_paces() {
        let lim = RateLimiter::new(Some(600.0), 1.0, None, None); // 10/s
        let t0 = Instant::now();
        for _ in 0..5 {
            lim.acquire(0).await;
        }
        let dt = t0.elapsed().as_secs_f64();
        assert!((0.35..0.8).contains(&dt), "{dt}");
    }
}
