//! The one retry policy of every HTTP client (the teacher, the datasets server, the package index,
//! verified downloads), and what it needs: what a failed attempt was ([`Failure`]), the
//! `Retry-After` a server sends (seconds or an HTTP date), and an error's source chain as text.
//!
//! - **Retried**: 408 and 429, every 5xx but 501 (a server that does not implement the request
//!   will not start to), timeouts, refused, reset or dropped connections, bodies cut short.
//! - **Not retried**: every other status (a 4xx is the request's fault, sending it again changes
//!   nothing) and a host name that does not resolve ([`Failure::Unresolved`]): on a machine
//!   without a network that is every request, and five retries per request only delay the
//!   answer; the caller gets an [`Unresolved`] error it can recognise (and switch to what works
//!   offline) at once.
//! - **Waits**: the server's `Retry-After` (or `retry-after-ms`) when it sends one, else
//!   exponential backoff (`base · 2^retry`, at most `backoff_max`), optionally with "equal
//!   jitter" so that many waiting clients do not return in lockstep. A `Retry-After` above
//!   `max_retry_after` is reported instead of waited on ([`LongRetryAfter::Report`]), or waited
//!   on only up to the cap ([`LongRetryAfter::Clip`]: the teacher, whose caller cannot do better
//!   than wait).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::util::rng::SplitMix64;

/// An error and its sources, `outer: inner: root` (reqwest's own message alone is rarely enough:
/// "error sending request" hides a TLS or DNS failure).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// What an attempt was

/// What a failed attempt was, as far as trying again goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The host name does not resolve (no network, no name server, a misspelt host): never
    /// retried.
    Unresolved,
    /// Lost on the way: a timeout, a refused, reset or dropped connection, a body cut short.
    Transient,
    /// The server answered with this status (and maybe asked for a wait).
    Status { code: u16, retry_after: Option<Duration> },
    /// Anything a second try cannot change (a bad request, a refused shape, an I/O error here).
    Permanent,
}

impl Failure {
    /// What a reqwest transport error was: a name that does not resolve, a request that could not
    /// be built or followed (permanent), or a lost exchange.
    pub fn of_transport(e: &reqwest::Error) -> Failure {
        if is_unresolved(e) {
            Failure::Unresolved
        } else if e.is_builder() || e.is_redirect() {
            Failure::Permanent
        } else {
            Failure::Transient
        }
    }

    /// An HTTP status, with the wait the server asked for.
    pub fn of_status(code: u16, retry_after: Option<Duration>) -> Failure {
        Failure::Status { code, retry_after }
    }

    /// Worth another attempt (ignoring how many were made).
    pub fn is_retryable(self) -> bool {
        match self {
            Failure::Transient => true,
            Failure::Status { code, .. } => status_is_retryable(code),
            Failure::Unresolved | Failure::Permanent => false,
        }
    }

    fn retry_after(self) -> Option<Duration> {
        match self {
            Failure::Status { retry_after, .. } => retry_after,
            _ => None,
        }
    }
}

/// 408 (the server timed the request out), 429 (too many requests) and every 5xx but 501 (not
/// implemented: it will not be tomorrow either).
pub fn status_is_retryable(code: u16) -> bool {
    matches!(code, 408 | 429) || ((500..600).contains(&code) && code != 501)
}

/// Whether `e` (or an error in its source chain) is a host name that does not resolve. hyper
/// reports it as `dns error` over the resolver's `failed to lookup address information: …`
/// (getaddrinfo's "Name or service not known", "Temporary failure in name resolution", …).
pub fn is_unresolved(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<Unresolved>() {
            return true;
        }
        let text = err.to_string();
        if text.starts_with("dns error") || text.contains("failed to lookup address") {
            return true;
        }
        next = err.source();
    }
    false
}

/// A host name that does not resolve: the request was not retried. Callers find it in an error's
/// source chain with [`find_unresolved`] (or `anyhow::Error::downcast_ref`) to tell "offline"
/// from other failures.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{url}: the host name does not resolve (not retried): {detail}; fix: check the address and the network connection")]
pub struct Unresolved {
    pub url: String,
    /// The resolver's message.
    pub detail: String,
}

/// The [`Unresolved`] in `e`'s source chain, if any.
pub fn find_unresolved<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Unresolved> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(u) = err.downcast_ref::<Unresolved>() {
            return Some(u);
        }
        next = err.source();
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The policy

/// What to do with a `Retry-After` longer than [`RetryPolicy::max_retry_after`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongRetryAfter {
    /// Stop, reporting the wait the server asked for ([`Stop::WaitTooLong`]).
    Report,
    /// Wait `max_retry_after` and try again.
    Clip,
}

/// How many times, and after how long, a failed request is sent again (see the module docs).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub max_retries: u32,
    /// The wait before the first retry without a `Retry-After`; doubled for each further retry.
    pub backoff_base: Duration,
    /// The longest backoff.
    pub backoff_max: Duration,
    /// The longest `Retry-After` waited on as asked.
    pub max_retry_after: Duration,
    pub long_retry_after: LongRetryAfter,
    jitter: Option<Arc<Mutex<SplitMix64>>>,
}

/// What follows a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Next {
    /// Wait this long, then try again.
    Retry(Duration),
    Stop(Stop),
}

/// Why the policy stopped trying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The failure is not worth a second attempt (a 4xx, a permanent error).
    NotRetryable,
    /// The host name does not resolve.
    Unresolved,
    /// Every retry was used.
    Exhausted,
    /// The server asked to wait this long, more than [`RetryPolicy::max_retry_after`].
    WaitTooLong(Duration),
}

/// The last error of a request the policy stopped trying, with how many attempts were made.
#[derive(Debug)]
pub struct GaveUp<E> {
    pub error: E,
    pub attempts: u32,
    pub why: Stop,
}

/// A failed HTTP attempt: what it was, and what to tell about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    pub failure: Failure,
    pub detail: String,
}

impl Failed {
    /// A transport error (its source chain as the detail).
    pub fn transport(e: &reqwest::Error) -> Self {
        Failed { failure: Failure::of_transport(e), detail: error_chain(e) }
    }

    /// An answer with a status other than 2xx (the wait it asks for read from its headers).
    pub fn status(response: &reqwest::Response, detail: String) -> Self {
        let retry_after = retry_after_from_headers(response.headers(), SystemTime::now());
        Failed { failure: Failure::of_status(response.status().as_u16(), retry_after), detail }
    }
}

impl GaveUp<Failed> {
    /// The last failure in one line: `(after N attempts)` when the retries were used up, the
    /// wait the server asked for when it was too long.
    pub fn describe(&self) -> String {
        let detail = &self.error.detail;
        match self.why {
            Stop::Exhausted => format!("{detail} (after {} attempts)", self.attempts),
            Stop::WaitTooLong(wait) => {
                format!("{detail}; the server asks to wait {} s; try again later", wait.as_secs())
            }
            Stop::NotRetryable | Stop::Unresolved => detail.clone(),
        }
    }

    /// The typed error when the host name did not resolve.
    pub fn unresolved(&self, url: &str) -> Option<Unresolved> {
        (self.why == Stop::Unresolved)
            .then(|| Unresolved { url: url.to_string(), detail: self.error.detail.clone() })
    }
}

/// Passed to the `on_retry` callback of [`RetryPolicy::run`] before each wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retrying {
    /// 1 for the first retry.
    pub retry: u32,
    pub wait: Duration,
}

impl RetryPolicy {
    /// `max_retries` retries with backoff from `backoff_base` up to `backoff_max`, no jitter;
    /// a `Retry-After` over 300 s is reported.
    pub fn new(max_retries: u32, backoff_base: Duration, backoff_max: Duration) -> Self {
        RetryPolicy {
            max_retries,
            backoff_base,
            backoff_max,
            max_retry_after: Duration::from_secs(300),
            long_retry_after: LongRetryAfter::Report,
            jitter: None,
        }
    }

    /// The longest `Retry-After` waited on as asked, and what to do with a longer one.
    pub fn with_max_retry_after(mut self, max: Duration, longer: LongRetryAfter) -> Self {
        self.max_retry_after = max;
        self.long_retry_after = longer;
        self
    }

    /// Spread the waits by a seeded random share ("equal jitter" on backoffs: half fixed, half
    /// uniform; up to 10 % and 250 ms on a `Retry-After`). The seed only moves the waits.
    pub fn with_jitter(mut self, seed: u64) -> Self {
        self.jitter = Some(Arc::new(Mutex::new(SplitMix64::new(seed))));
        self
    }

    /// A uniform draw in [0, 1) when jittered, else `None`.
    fn draw(&self) -> Option<f64> {
        self.jitter.as_ref().map(|j| j.lock().unwrap_or_else(|p| p.into_inner()).next_f64())
    }

    /// The backoff before retry `retry` (0 for the first): `base · 2^retry`, at most
    /// `backoff_max`, before jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        self.backoff_base.saturating_mul(1u32 << retry.min(20)).min(self.backoff_max)
    }

    /// What follows a failed attempt after `retries_done` retries.
    pub fn next(&self, retries_done: u32, failure: Failure) -> Next {
        match failure {
            Failure::Unresolved => return Next::Stop(Stop::Unresolved),
            f if !f.is_retryable() => return Next::Stop(Stop::NotRetryable),
            _ => {}
        }
        if retries_done >= self.max_retries {
            return Next::Stop(Stop::Exhausted);
        }
        let wait = match failure.retry_after() {
            Some(asked) if asked > self.max_retry_after => match self.long_retry_after {
                LongRetryAfter::Report => return Next::Stop(Stop::WaitTooLong(asked)),
                LongRetryAfter::Clip => self.jittered_retry_after(self.max_retry_after),
            },
            Some(asked) => self.jittered_retry_after(asked),
            None => {
                let backoff = self.backoff(retries_done);
                match self.draw() {
                    Some(u) => backoff / 2 + backoff.mul_f64(u / 2.0),
                    None => backoff,
                }
            }
        };
        Next::Retry(wait)
    }

    fn jittered_retry_after(&self, asked: Duration) -> Duration {
        match self.draw() {
            Some(u) => asked + Duration::from_secs_f64(u * (asked.as_secs_f64() * 0.1).min(0.25)),
            None => asked,
        }
    }

    /// Run `attempt` until it succeeds or the policy stops: `classify` says what a failure was,
    /// `on_retry` hears of each retry before its wait (to log or count it).
    pub async fn run<T, E, Fut>(
        &self,
        mut attempt: impl FnMut() -> Fut,
        classify: impl Fn(&E) -> Failure,
        mut on_retry: impl FnMut(&E, Retrying),
    ) -> Result<T, GaveUp<E>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let mut retries = 0u32;
        loop {
            let error = match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            match self.next(retries, classify(&error)) {
                Next::Retry(wait) => {
                    on_retry(&error, Retrying { retry: retries + 1, wait });
                    tokio::time::sleep(wait).await;
                    retries += 1;
                }
                Next::Stop(why) => return Err(GaveUp { error, attempts: retries + 1, why }),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Retry-After

/// The wait a server asks for: `retry-after-ms` (OpenAI's), else `Retry-After` (seconds or an
/// HTTP date, relative to `now`).
pub fn retry_after_from_headers(
    h: &reqwest::header::HeaderMap,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(ms) = h
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
    {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    h.get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| parse_retry_after(s, now))
}

/// `Retry-After`: delay-seconds (fractions tolerated) or an HTTP date (a date in the past is 0).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = parse_http_date(v)?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// HTTP dates (RFC 9110 §5.6.7): IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, the obsolete
/// RFC 850 form `Sunday, 06-Nov-94 08:49:37 GMT` and asctime `Sun Nov  6 08:49:37 1994`.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let month = |m: &str| -> Option<u32> {
        let names =
            ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
        names.iter().position(|n| m.eq_ignore_ascii_case(n)).map(|i| i as u32 + 1)
    };
    let hms = |t: &str| -> Option<(u32, u32, u32)> {
        let mut it = t.split(':').map(|x| x.parse::<u32>().ok());
        let r = (it.next()??, it.next()??, it.next()??);
        (it.next().is_none() && r.0 < 24 && r.1 < 60 && r.2 < 61).then_some(r)
    };
    let toks: Vec<&str> = s.split_whitespace().collect();
    let (y, mo, d, (hh, mm, ss)) = if let Some((_, rest)) = s.split_once(',') {
        let t: Vec<&str> = rest.split_whitespace().collect();
        match t.as_slice() {
            [d, m, y, time, "GMT"] => {
                (y.parse::<i64>().ok()?, month(m)?, d.parse::<u32>().ok()?, hms(time)?)
            }
            [dmy, time, "GMT"] => {
                let p: Vec<&str> = dmy.split('-').collect();
                if p.len() != 3 {
                    return None;
                }
                let yy = p[2].parse::<i64>().ok()?;
                // RFC 850's two-digit years: RFC 9110 reads 70–99 as 19xx.
                let y = match (p[2].len(), yy >= 70) {
                    (2, true) => 1900 + yy,
                    (2, false) => 2000 + yy,
                    _ => yy,
                };
                (y, month(p[1])?, p[0].parse::<u32>().ok()?, hms(time)?)
            }
            _ => return None,
        }
    } else {
        match toks.as_slice() {
            [_, m, d, time, y] => {
                (y.parse::<i64>().ok()?, month(m)?, d.parse::<u32>().ok()?, hms(time)?)
            }
            _ => return None,
        }
    };
    if !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + (hh * 3600 + mm * 60 + ss) as i64;
    if secs < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs(secs as u64))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn http_dates() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 784_111_777);
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(t));
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(parse_http_date("Sun, 32 Nov 1994 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 24:00:00 GMT"), None);
        // A leap day after the epoch, and RFC 850's two-digit years past 2000.
        let leap = parse_http_date("Thu, 29 Feb 2024 00:00:00 GMT").unwrap();
        assert_eq!(leap.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1_709_164_800);
        assert_eq!(parse_http_date("Thursday, 29-Feb-24 00:00:00 GMT"), Some(leap));
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_770);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0.5 ", now), Some(Duration::from_millis(500)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:30 GMT", now + Duration::from_secs(60)),
            Some(Duration::ZERO),
            "a date in the past asks for no wait"
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);

        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after_from_headers(&h, now), None);
        h.insert(reqwest::header::RETRY_AFTER, "Sun, 06 Nov 1994 08:49:40 GMT".parse().unwrap());
        assert_eq!(retry_after_from_headers(&h, now), Some(Duration::from_secs(10)));
        h.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(
            retry_after_from_headers(&h, now),
            Some(Duration::from_millis(1500)),
            "retry-after-ms wins"
        );
    }

    #[test]
    fn which_failures_are_retried() {
        for code in [408, 429, 500, 502, 503, 504, 599] {
            assert!(status_is_retryable(code), "{code}");
            assert!(Failure::of_status(code, None).is_retryable(), "{code}");
        }
        for code in [200, 301, 400, 401, 403, 404, 409, 413, 422, 501] {
            assert!(!status_is_retryable(code), "{code}");
        }
        assert!(Failure::Transient.is_retryable());
        assert!(!Failure::Unresolved.is_retryable());
        assert!(!Failure::Permanent.is_retryable());
    }

    /// An error whose source is `inner`, as hyper wraps the resolver's error.
    #[derive(Debug)]
    struct Wrapped(&'static str, std::io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn dns_failures_are_found_in_the_source_chain() {
        let lookup = || {
            std::io::Error::other("failed to lookup address information: Name or service not known")
        };
        assert!(is_unresolved(&Wrapped("client error (Connect)", lookup())));
        assert!(is_unresolved(&Wrapped(
            "dns error",
            std::io::Error::other("Temporary failure in name resolution")
        )));
        assert!(!is_unresolved(&Wrapped(
            "client error (Connect)",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
        )));
        let typed = Unresolved { url: "https://x.invalid/".into(), detail: "dns error".into() };
        let outer = anyhow::Error::new(typed.clone()).context("loading `x` from the hub");
        assert!(is_unresolved(outer.as_ref()));
        assert_eq!(find_unresolved(outer.as_ref()), Some(&typed));
        assert_eq!(find_unresolved(&Wrapped("dns error", lookup())), None, "only the typed error");
    }

    /// A real lookup of a name that cannot exist (RFC 6761 reserves `.invalid`): classified as
    /// unresolved and tried once. On a machine with a network and without one alike.
    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_tried_once() {
        // No proxy: a proxy would resolve the name (and answer 502) in our place.
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let policy = RetryPolicy::new(5, Duration::from_millis(1), Duration::from_millis(2));
        let attempts = AtomicU32::new(0);
        let r = policy
            .run(
                || {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    client.get("http://p2m-no-such-host.invalid/").send()
                },
                Failure::of_transport,
                |_, _| {},
            )
            .await;
        let gave_up = r.unwrap_err();
        assert_eq!(gave_up.why, Stop::Unresolved, "{}", error_chain(&gave_up.error));
        assert_eq!((gave_up.attempts, attempts.load(Ordering::SeqCst)), (1, 1));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let p = RetryPolicy::new(10, Duration::from_millis(500), Duration::from_secs(3));
        let waits: Vec<u64> = (0..6).map(|r| p.backoff(r).as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 3000, 3000, 3000]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(3), "no overflow");
        assert_eq!(p.next(2, Failure::Transient), Next::Retry(Duration::from_secs(2)));
        // Equal jitter: between half the backoff and the backoff.
        let j = p.clone().with_jitter(7);
        for retry in 0..6 {
            let Next::Retry(w) = j.next(retry, Failure::Transient) else { panic!() };
            let b = p.backoff(retry);
            assert!(w >= b / 2 && w <= b, "{retry}: {w:?} for {b:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let p = RetryPolicy::new(3, Duration::from_millis(500), Duration::from_secs(30))
            .with_max_retry_after(Duration::from_secs(60), LongRetryAfter::Report);
        let asked = |s: u64| Failure::of_status(429, Some(Duration::from_secs(s)));
        assert_eq!(p.next(0, asked(7)), Next::Retry(Duration::from_secs(7)));
        assert_eq!(p.next(0, asked(60)), Next::Retry(Duration::from_secs(60)));
        assert_eq!(p.next(0, asked(61)), Next::Stop(Stop::WaitTooLong(Duration::from_secs(61))));
        let clip = p.clone().with_max_retry_after(Duration::from_secs(60), LongRetryAfter::Clip);
        assert_eq!(clip.next(0, asked(3600)), Next::Retry(Duration::from_secs(60)));
        // Jitter on a Retry-After: never shorter, at most 250 ms longer.
        let j = clip.with_jitter(1);
        let Next::Retry(w) = j.next(0, asked(5)) else { panic!() };
        assert!(w >= Duration::from_secs(5) && w <= Duration::from_millis(5250), "{w:?}");
        // Used retries end it whatever the server asks.
        assert_eq!(p.next(3, asked(1)), Next::Stop(Stop::Exhausted));
        assert_eq!(p.next(0, Failure::of_status(404, None)), Next::Stop(Stop::NotRetryable));
        assert_eq!(p.next(0, Failure::of_status(501, None)), Next::Stop(Stop::NotRetryable));
        assert_eq!(p.next(0, Failure::Unresolved), Next::Stop(Stop::Unresolved));
    }

    #[tokio::test]
    async fn run_retries_until_success_or_exhaustion() {
        let p = RetryPolicy::new(3, Duration::from_millis(1), Duration::from_millis(4));
        let calls = AtomicU32::new(0);
        let mut heard = Vec::new();
        let r: Result<u32, GaveUp<Failure>> = p
            .run(
                || async {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    if n < 2 {
                        Err(Failure::of_status(503, None))
                    } else {
                        Ok(n)
                    }
                },
                |f| *f,
                |_, r| heard.push(r),
            )
            .await;
        assert_eq!(r.unwrap(), 2);
        assert_eq!(
            heard,
            [
                Retrying { retry: 1, wait: Duration::from_millis(1) },
                Retrying { retry: 2, wait: Duration::from_millis(2) }
            ]
        );
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = p
            .run(
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(Failure::Transient)
                },
                |f| *f,
                |_, _| {},
            )
            .await;
        let gave_up = r.unwrap_err();
        assert_eq!((gave_up.why, gave_up.attempts), (Stop::Exhausted, 4));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }
}
