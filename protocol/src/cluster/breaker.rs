//! Circuit breakers, one per broker id, for the clients of a [`ClusterClient`](super::ClusterClient).
//!
//! A broker that keeps failing (transport failures, timeouts, `Unavailable`, a try the router
//! says is futile because it reports the broker down) should not hold its clients' resources:
//! after `failures` consecutive failures within `window` its breaker **opens**, and requests for
//! the shards it leads are refused at once (or wait outside the producer's shared buffer, per
//! [`BreakerMode`]). After `cooldown` the breaker is **half-open**: exactly one trial request goes
//! through; its success **closes** the breaker, its failure opens it again for another cooldown.
//! Typed application answers (`NotOwner`, `Moving`, an unknown shard, ...) are not failures: the
//! broker answered, and those mean "re-route".
//!
//! [`Breaker`] is the pure state machine: every method takes the current time, so it is tested
//! without sleeping. [`Breakers`] is the per-broker registry the cluster client keeps.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// What the clients do with requests for a broker whose breaker is open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BreakerMode {
    /// Keep them queued (a producer holds them outside its shared buffer) until the shard's
    /// routing changes or the breaker closes, at most until the request's deadline.
    #[default]
    Wait,
    /// Refuse them at once with [`BreakerOpen`], naming the broker.
    FailFast,
    /// No breakers: every request is tried until its deadline, as without this module.
    Off,
}

impl std::str::FromStr for BreakerMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "wait" => Ok(BreakerMode::Wait),
            "fail-fast" | "failfast" | "fail_fast" => Ok(BreakerMode::FailFast),
            "off" | "none" => Ok(BreakerMode::Off),
            _ => Err(format!(
                "unknown breaker mode {s:?}; expected wait, fail-fast or off"
            )),
        }
    }
}

impl fmt::Display for BreakerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerMode::Wait => "wait",
            BreakerMode::FailFast => "fail-fast",
            BreakerMode::Off => "off",
        })
    }
}

/// Default consecutive failures that open a breaker.
pub const DEFAULT_FAILURES: u32 = 5;
/// Default window the failures must fall within.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// Default time an open breaker waits before its trial request.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(2);
/// Default time a try may go unanswered before the client asks the router whether the broker
/// is still up (and gives the try up if the router says it is not, or the shard moved).
pub const DEFAULT_STALL_CHECK: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    pub mode: BreakerMode,
    /// Consecutive failures (no success in between) within `window` that open the breaker.
    pub failures: u32,
    pub window: Duration,
    /// How long an open breaker refuses requests before letting one trial through.
    pub cooldown: Duration,
    /// A try unanswered for this long (beyond a fetch's own long-poll wait) makes the client
    /// re-read the shard's routing, then again every `stall_check`: when the router no longer
    /// routes the shard to that broker (it reports the broker down, or the shard moved or
    /// failed over) the try is given up as a failure of the broker and the request re-routed.
    /// This is how a paused broker, which never closes its connections, is noticed before the
    /// request timeout.
    pub stall_check: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            mode: BreakerMode::Wait,
            failures: DEFAULT_FAILURES,
            window: DEFAULT_WINDOW,
            cooldown: DEFAULT_COOLDOWN,
            stall_check: DEFAULT_STALL_CHECK,
        }
    }
}

impl BreakerConfig {
    /// No breakers (what a bare [`ClusterClient`](super::ClusterClient) starts with).
    pub fn off() -> Self {
        BreakerConfig {
            mode: BreakerMode::Off,
            ..BreakerConfig::default()
        }
    }

    pub fn enabled(&self) -> bool {
        self.mode != BreakerMode::Off && self.failures > 0
    }
}

/// A breaker's state as clients see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Refusing requests; a trial goes through once the cooldown is over.
    Open,
    /// The cooldown is over: one trial request decides.
    HalfOpen,
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        })
    }
}

/// A request refused because its broker's breaker is open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerOpen {
    pub broker: u32,
    /// The broker's address, when the routing table knows it.
    pub addr: Option<String>,
    /// Consecutive failures that opened it.
    pub failures: u32,
    /// The last failure seen.
    pub last_error: String,
    /// Time left until the next trial may go (zero: a trial is in flight).
    pub retry_in: Duration,
    /// The request waited this long for the breaker to close or the shard to move (wait mode).
    pub waited: Option<Duration>,
}

impl fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit breaker for broker {}", self.broker)?;
        if let Some(a) = &self.addr {
            write!(f, " ({a})")?;
        }
        write!(
            f,
            " is open after {} consecutive failures (last: {})",
            self.failures, self.last_error
        )?;
        match self.waited {
            Some(w) => write!(
                f,
                "; waited {:.1} s for it to close or the shard to move",
                w.as_secs_f64()
            ),
            None if self.retry_in.is_zero() => {
                write!(f, "; failing fast, a trial request is under way")
            }
            None => write!(
                f,
                "; failing fast, next trial in {:.1} s",
                self.retry_in.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for BreakerOpen {}

/// One broker's breaker, as reported in client stats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BreakerStatus {
    pub broker: u32,
    pub addr: Option<String>,
    pub state: Option<BreakerState>,
    /// Times it opened (a failed trial re-opening it counts too).
    pub opened: u64,
    /// Requests it refused while open.
    pub rejected: u64,
    /// Consecutive failures counted now (within the window).
    pub failures: u32,
    pub last_error: Option<String>,
}

impl fmt::Display for BreakerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.unwrap_or(BreakerState::Closed);
        write!(
            f,
            "broker {} {state} (opened {}x, {} requests refused)",
            self.broker, self.opened, self.rejected
        )
    }
}

/// What [`Breaker::admit`] decided for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go.
    Go,
    /// Half-open: this request is the one trial; report its outcome with `trial = true`.
    Trial,
    /// Open (or half-open with the trial in flight): refused.
    Refuse(BreakerOpen),
}

/// A state change worth logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Opened,
    HalfOpened,
    Closed,
    /// A failed trial re-opened it.
    Reopened,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { trial: bool },
}

/// The state machine of one broker's breaker. Time is passed in: nothing here reads a clock.
#[derive(Clone, Debug)]
pub struct Breaker {
    phase: Phase,
    /// Times of the consecutive failures since the last success, oldest first.
    failures: VecDeque<Instant>,
    /// The failures that opened it (reported while open).
    opened_after: u32,
    last_error: Option<String>,
    opened: u64,
    rejected: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            phase: Phase::Closed,
            failures: VecDeque::new(),
            opened_after: 0,
            last_error: None,
            opened: 0,
            rejected: 0,
        }
    }
}

impl Breaker {
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may go now without taking anything: closed, or half-open with the
    /// trial still free (the request that goes will take it).
    pub fn would_admit(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Closed => true,
            Phase::Open { until } => now >= until,
            Phase::HalfOpen { trial } => !trial,
        }
    }

    /// Decides whether a request may go. A refusal is counted.
    pub fn admit(&mut self, now: Instant) -> (Admit, Option<Transition>) {
        let mut transition = None;
        if let Phase::Open { until } = self.phase {
            if now >= until {
                self.phase = Phase::HalfOpen { trial: false };
                transition = Some(Transition::HalfOpened);
            }
        }
        let admit = match &mut self.phase {
            Phase::Closed => Admit::Go,
            Phase::HalfOpen { trial } if !*trial => {
                *trial = true;
                Admit::Trial
            }
            Phase::HalfOpen { .. } => {
                self.rejected += 1;
                Admit::Refuse(self.refusal(Duration::ZERO))
            }
            Phase::Open { until } => {
                let left = until.saturating_duration_since(now);
                self.rejected += 1;
                Admit::Refuse(self.refusal(left))
            }
        };
        (admit, transition)
    }

    fn refusal(&self, retry_in: Duration) -> BreakerOpen {
        BreakerOpen {
            broker: 0,
            addr: None,
            failures: self.opened_after,
            last_error: self.last_error.clone().unwrap_or_default(),
            retry_in,
            waited: None,
        }
    }

    /// The broker answered. A trial's success closes the breaker; any success while closed
    /// resets the failure count. Late answers to requests admitted before it opened change
    /// nothing while it is open: only the trial decides.
    pub fn on_success(&mut self, trial: bool) -> Option<Transition> {
        match self.phase {
            Phase::Closed => {
                self.failures.clear();
                None
            }
            Phase::HalfOpen { .. } if trial => {
                self.phase = Phase::Closed;
                self.failures.clear();
                Some(Transition::Closed)
            }
            _ => None,
        }
    }

    /// The broker failed a request. Opens the breaker once `failures` consecutive failures fall
    /// within `window`; a trial's failure re-opens it for another cooldown.
    pub fn on_failure(
        &mut self,
        config: &BreakerConfig,
        now: Instant,
        trial: bool,
        error: &str,
    ) -> Option<Transition> {
        self.last_error = Some(error.to_string());
        match self.phase {
            Phase::Closed => {
                self.failures.push_back(now);
                while self
                    .failures
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) > config.window)
                {
                    self.failures.pop_front();
                }
                if self.failures.len() as u32 >= config.failures.max(1) {
                    self.opened_after = self.failures.len() as u32;
                    self.failures.clear();
                    self.open(config, now);
                    Some(Transition::Opened)
                } else {
                    None
                }
            }
            Phase::HalfOpen { .. } if trial => {
                self.open(config, now);
                Some(Transition::Reopened)
            }
            _ => None,
        }
    }

    fn open(&mut self, config: &BreakerConfig, now: Instant) {
        self.phase = Phase::Open {
            until: now + config.cooldown,
        };
        self.opened += 1;
    }

    /// A trial ended without an outcome (its caller went away): the next request may try.
    pub fn release_trial(&mut self) {
        if let Phase::HalfOpen { trial } = &mut self.phase {
            *trial = false;
        }
    }

    fn status(&self, broker: u32, addr: Option<String>, now: Instant) -> BreakerStatus {
        BreakerStatus {
            broker,
            addr,
            state: Some(self.state(now)),
            opened: self.opened,
            rejected: self.rejected,
            failures: self.failures.len() as u32,
            last_error: self.last_error.clone(),
        }
    }
}

struct Entry {
    breaker: Breaker,
    addr: Option<String>,
}

/// The breakers of one cluster client, by broker id.
pub struct Breakers {
    config: Mutex<BreakerConfig>,
    map: Mutex<HashMap<u32, Entry>>,
    /// Bumped at every transition: lets waiters (a producer parking a shard) notice.
    changes: watch::Sender<u64>,
}

impl Default for Breakers {
    fn default() -> Self {
        Breakers::new(BreakerConfig::off())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the state consistent: a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Breakers {
    pub fn new(config: BreakerConfig) -> Self {
        Breakers {
            config: Mutex::new(config),
            map: Mutex::new(HashMap::new()),
            changes: watch::channel(0).0,
        }
    }

    pub fn config(&self) -> BreakerConfig {
        lock(&self.config).clone()
    }

    pub fn set_config(&self, config: BreakerConfig) {
        *lock(&self.config) = config;
    }

    pub fn enabled(&self) -> bool {
        lock(&self.config).enabled()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether a request to `broker` would be refused now (without counting a refusal).
    pub fn refuses(&self, broker: u32, addr: Option<&str>, now: Instant) -> Option<BreakerOpen> {
        if !self.enabled() {
            return None;
        }
        let map = lock(&self.map);
        let e = map.get(&broker)?;
        if e.breaker.would_admit(now) {
            return None;
        }
        let retry_in = match e.breaker.phase {
            Phase::Open { until } => until.saturating_duration_since(now),
            _ => Duration::ZERO,
        };
        let mut r = e.breaker.refusal(retry_in);
        r.broker = broker;
        r.addr = addr.map(str::to_string).or_else(|| e.addr.clone());
        Some(r)
    }

    /// Asks `broker`'s breaker whether a request may go.
    pub fn admit(&self, broker: u32, addr: Option<&str>, now: Instant) -> Admit {
        if !self.enabled() {
            return Admit::Go;
        }
        let mut map = lock(&self.map);
        let e = map.entry(broker).or_insert_with(|| Entry {
            breaker: Breaker::default(),
            addr: None,
        });
        if addr.is_some() {
            e.addr = addr.map(str::to_string);
        }
        let (mut admit, t) = e.breaker.admit(now);
        if let Admit::Refuse(r) = &mut admit {
            r.broker = broker;
            r.addr = e.addr.clone();
        }
        let addr = e.addr.clone();
        drop(map);
        if let Some(t) = t {
            self.log(broker, addr.as_deref(), t, None);
        }
        admit
    }

    /// Reports the outcome of a request `admit` let through.
    pub fn record(&self, broker: u32, trial: bool, outcome: Result<(), &str>, now: Instant) {
        let config = self.config();
        if !config.enabled() {
            return;
        }
        let mut map = lock(&self.map);
        let e = map.entry(broker).or_insert_with(|| Entry {
            breaker: Breaker::default(),
            addr: None,
        });
        let t = match outcome {
            Ok(()) => e.breaker.on_success(trial),
            Err(error) => e.breaker.on_failure(&config, now, trial, error),
        };
        let addr = e.addr.clone();
        let after = e.breaker.opened_after;
        drop(map);
        if let Some(t) = t {
            self.log(
                broker,
                addr.as_deref(),
                t,
                Some((&config, after, outcome.err())),
            );
        }
    }

    pub fn release_trial(&self, broker: u32) {
        if let Some(e) = lock(&self.map).get_mut(&broker) {
            e.breaker.release_trial();
        }
    }

    /// Every breaker that ever saw a request, by broker id.
    pub fn status(&self, now: Instant) -> Vec<BreakerStatus> {
        let map = lock(&self.map);
        let mut v: Vec<BreakerStatus> = map
            .iter()
            .map(|(id, e)| e.breaker.status(*id, e.addr.clone(), now))
            .collect();
        v.sort_by_key(|s| s.broker);
        v
    }

    fn log(
        &self,
        broker: u32,
        addr: Option<&str>,
        t: Transition,
        detail: Option<(&BreakerConfig, u32, Option<&str>)>,
    ) {
        let addr = addr.unwrap_or("?");
        match (t, detail) {
            (Transition::Opened, Some((c, n, e))) => warn!(
                broker,
                %addr,
                failures = n,
                error = e.unwrap_or(""),
                "circuit breaker OPEN for broker {broker} ({addr}) after {n} consecutive failures \
                 within {:?}: requests for its shards {} for {:?}, then one trial request",
                c.window,
                if c.mode == BreakerMode::FailFast { "fail fast" } else { "wait (outside the producer's buffer)" },
                c.cooldown
            ),
            (Transition::Reopened, Some((c, _, e))) => debug!(
                broker, %addr, error = e.unwrap_or(""),
                "circuit breaker for broker {broker} re-opened: its trial request failed; next trial in {:?}",
                c.cooldown
            ),
            (Transition::Closed, _) => info!(
                broker, %addr,
                "circuit breaker CLOSED for broker {broker} ({addr}): its trial request succeeded"
            ),
            (Transition::HalfOpened, _) => {
                debug!(broker, %addr, "circuit breaker for broker {broker} half-open: sending one trial request")
            }
            _ => {}
        }
        self.changes.send_modify(|n| *n += 1);
    }
}

/// Command-line flags for the breakers (`runproduce`, `runconsume`).
#[cfg(feature = "cli")]
#[derive(clap::Args, Debug, Clone)]
pub struct BreakerArgs {
    /// Consecutive failures of one broker (transport errors, timeouts, `unavailable` answers,
    /// or the router reporting it down while a request waits on it) that open its circuit
    /// breaker, if they fall within --breaker-window-ms. A success in between starts the count
    /// again. Answers such as "not the owner" or "moving" are not failures.
    #[arg(long = "breaker-failures", default_value_t = DEFAULT_FAILURES, value_name = "N")]
    pub failures: u32,
    /// The window, in milliseconds, the --breaker-failures failures must fall within; older
    /// failures do not count.
    #[arg(long = "breaker-window-ms", default_value_t = DEFAULT_WINDOW.as_millis() as u64, value_name = "MS")]
    pub window_ms: u64,
    /// How long, in milliseconds, an open breaker refuses its broker's requests before it lets
    /// one trial request through (half-open): its success closes the breaker, its failure opens
    /// it for another cool-down.
    #[arg(long = "breaker-cooldown-ms", default_value_t = DEFAULT_COOLDOWN.as_millis() as u64, value_name = "MS")]
    pub cooldown_ms: u64,
}

#[cfg(feature = "cli")]
impl BreakerArgs {
    pub fn config(&self, mode: BreakerMode) -> BreakerConfig {
        BreakerConfig {
            mode,
            failures: self.failures,
            window: Duration::from_millis(self.window_ms.max(1)),
            cooldown: Duration::from_millis(self.cooldown_ms),
            ..BreakerConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(failures: u32, window_ms: u64, cooldown_ms: u64) -> BreakerConfig {
        BreakerConfig {
            mode: BreakerMode::FailFast,
            failures,
            window: Duration::from_millis(window_ms),
            cooldown: Duration::from_millis(cooldown_ms),
            ..BreakerConfig::default()
        }
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn opens_after_n_consecutive_failures_within_the_window() {
        let c = cfg(3, 1000, 500);
        let t0 = Instant::now();
        let mut b = Breaker::default();
        assert_eq!(b.on_failure(&c, ms(t0, 0), false, "e1"), None);
        assert_eq!(b.on_failure(&c, ms(t0, 100), false, "e2"), None);
        assert_eq!(b.state(ms(t0, 100)), BreakerState::Closed);
        assert_eq!(b.admit(ms(t0, 150)).0, Admit::Go);
        assert_eq!(
            b.on_failure(&c, ms(t0, 200), false, "e3"),
            Some(Transition::Opened)
        );
        assert_eq!(b.state(ms(t0, 200)), BreakerState::Open);
        match b.admit(ms(t0, 300)).0 {
            Admit::Refuse(r) => {
                assert_eq!(r.failures, 3);
                assert_eq!(r.last_error, "e3");
                assert_eq!(r.retry_in, Duration::from_millis(400));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.status(7, None, ms(t0, 300)).rejected, 1);
        assert_eq!(b.status(7, None, ms(t0, 300)).opened, 1);
    }

    #[test]
    fn a_success_resets_the_count() {
        let c = cfg(3, 1000, 500);
        let t0 = Instant::now();
        let mut b = Breaker::default();
        b.on_failure(&c, ms(t0, 0), false, "e");
        b.on_failure(&c, ms(t0, 10), false, "e");
        assert_eq!(b.on_success(false), None);
        b.on_failure(&c, ms(t0, 20), false, "e");
        assert_eq!(b.on_failure(&c, ms(t0, 30), false, "e"), None);
        assert_eq!(b.state(ms(t0, 30)), BreakerState::Closed);
        assert_eq!(
            b.on_failure(&c, ms(t0, 40), false, "e"),
            Some(Transition::Opened)
        );
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let c = cfg(3, 1000, 500);
        let t0 = Instant::now();
        let mut b = Breaker::default();
        b.on_failure(&c, ms(t0, 0), false, "e");
        b.on_failure(&c, ms(t0, 900), false, "e");
        // The first is now more than 1 s old: two within the window, not three.
        assert_eq!(b.on_failure(&c, ms(t0, 1_500), false, "e"), None);
        assert_eq!(b.state(ms(t0, 1_500)), BreakerState::Closed);
        // Failures spaced wider than the window never open it.
        for i in 0..10 {
            assert_eq!(
                b.on_failure(&c, ms(t0, 3_000 + i * 1_100), false, "e"),
                None
            );
        }
        assert_eq!(b.state(ms(t0, 20_000)), BreakerState::Closed);
        // The one at 12.9 s is out of the window of these: three new ones are needed.
        assert_eq!(b.on_failure(&c, ms(t0, 20_001), false, "e"), None);
        assert_eq!(b.on_failure(&c, ms(t0, 20_002), false, "e"), None);
        assert_eq!(
            b.on_failure(&c, ms(t0, 20_003), false, "e"),
            Some(Transition::Opened)
        );
    }

    fn open_breaker(c: &BreakerConfig, t0: Instant) -> Breaker {
        let mut b = Breaker::default();
        for i in 0..c.failures {
            b.on_failure(c, ms(t0, u64::from(i)), false, "down");
        }
        assert_eq!(b.state(t0 + Duration::from_millis(10)), BreakerState::Open);
        b
    }

    #[test]
    fn half_open_lets_exactly_one_trial_through_and_its_success_closes() {
        let c = cfg(2, 1000, 500);
        let t0 = Instant::now();
        let mut b = open_breaker(&c, t0);
        assert!(matches!(b.admit(ms(t0, 400)).0, Admit::Refuse(_)));
        assert!(!b.would_admit(ms(t0, 400)));
        // Cool-down over: one trial, everyone else still refused.
        assert!(b.would_admit(ms(t0, 600)));
        assert_eq!(b.state(ms(t0, 600)), BreakerState::HalfOpen);
        assert_eq!(
            b.admit(ms(t0, 600)),
            (Admit::Trial, Some(Transition::HalfOpened))
        );
        for i in 0..5 {
            assert!(matches!(b.admit(ms(t0, 601 + i)).0, Admit::Refuse(r) if r.retry_in.is_zero()));
        }
        assert!(!b.would_admit(ms(t0, 610)));
        // Late answers to requests from before it opened decide nothing.
        assert_eq!(b.on_success(false), None);
        assert_eq!(b.on_failure(&c, ms(t0, 620), false, "late"), None);
        assert_eq!(b.state(ms(t0, 620)), BreakerState::HalfOpen);
        assert_eq!(b.on_success(true), Some(Transition::Closed));
        assert_eq!(b.state(ms(t0, 630)), BreakerState::Closed);
        assert_eq!(b.admit(ms(t0, 630)).0, Admit::Go);
        // Closed again with a fresh count: one failure does not re-open it.
        assert_eq!(b.on_failure(&c, ms(t0, 640), false, "e"), None);
        assert_eq!(b.status(1, None, ms(t0, 640)).opened, 1);
    }

    #[test]
    fn a_failed_trial_reopens_for_another_cooldown() {
        let c = cfg(2, 1000, 500);
        let t0 = Instant::now();
        let mut b = open_breaker(&c, t0);
        assert_eq!(b.admit(ms(t0, 600)).0, Admit::Trial);
        assert_eq!(
            b.on_failure(&c, ms(t0, 700), true, "still down"),
            Some(Transition::Reopened)
        );
        assert_eq!(b.state(ms(t0, 700)), BreakerState::Open);
        match b.admit(ms(t0, 900)).0 {
            Admit::Refuse(r) => {
                assert_eq!(r.retry_in, Duration::from_millis(300));
                assert_eq!(r.last_error, "still down");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.admit(ms(t0, 1_200)).0, Admit::Trial);
        assert_eq!(b.status(1, None, ms(t0, 1_200)).opened, 2);
    }

    #[test]
    fn an_abandoned_trial_frees_the_slot() {
        let c = cfg(1, 1000, 100);
        let t0 = Instant::now();
        let mut b = open_breaker(&c, t0);
        assert_eq!(b.admit(ms(t0, 200)).0, Admit::Trial);
        assert!(matches!(b.admit(ms(t0, 201)).0, Admit::Refuse(_)));
        b.release_trial();
        assert_eq!(b.admit(ms(t0, 202)).0, Admit::Trial);
    }

    #[test]
    fn the_registry_keeps_one_breaker_per_broker_and_is_inert_when_off() {
        let t0 = Instant::now();
        let off = Breakers::default();
        for _ in 0..20 {
            off.record(1, false, Err("x"), t0);
        }
        assert_eq!(off.admit(1, None, t0), Admit::Go);
        assert!(off.refuses(1, None, t0).is_none());

        let reg = Breakers::new(cfg(2, 1000, 500));
        let mut changes = reg.subscribe();
        assert_eq!(reg.admit(1, Some("a:1"), t0), Admit::Go);
        assert_eq!(reg.admit(2, Some("b:2"), t0), Admit::Go);
        reg.record(1, false, Err("boom"), t0);
        reg.record(1, false, Err("boom"), ms(t0, 1));
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        let refused = reg.refuses(1, None, ms(t0, 2)).expect("broker 1 open");
        assert_eq!(refused.broker, 1);
        assert_eq!(refused.addr.as_deref(), Some("a:1"));
        let text = refused.to_string();
        assert!(
            text.starts_with("circuit breaker for broker 1 (a:1) is open after 2 consecutive failures (last: boom)"),
            "{text}"
        );
        assert!(reg.refuses(2, None, ms(t0, 2)).is_none());
        assert_eq!(reg.admit(2, None, ms(t0, 3)), Admit::Go);
        let st = reg.status(ms(t0, 3));
        assert_eq!(st.len(), 2);
        assert_eq!(st[0].state, Some(BreakerState::Open));
        assert_eq!(st[1].state, Some(BreakerState::Closed));
        assert_eq!(
            st[0].to_string(),
            "broker 1 open (opened 1x, 0 requests refused)"
        );
    }

    #[test]
    fn modes_parse() {
        assert_eq!("wait".parse::<BreakerMode>(), Ok(BreakerMode::Wait));
        assert_eq!(
            "Fail-Fast".parse::<BreakerMode>(),
            Ok(BreakerMode::FailFast)
        );
        assert_eq!("off".parse::<BreakerMode>(), Ok(BreakerMode::Off));
        assert!("sometimes".parse::<BreakerMode>().is_err());
    }
}
