//! The autoscaler of `shardq up --autoscale MIN..MAX`: it measures the load the cluster takes
//! (records or bytes produced per second, per broker, from the growth of every shard's log as
//! the router reports it), adds a broker while that load stays above `--scale-up-above` for a
//! whole window, drains and removes one while it stays below `--scale-down-below`, and never
//! leaves MIN..MAX. It waits for moves to finish and for a cool-down between decisions, so a
//! rebalance is never mistaken for load, and it never flaps.
//!
//! Each decision is printed, logged, and appended to `DATA/autoscaler.log` (one JSON object a
//! line), where the router (which `shardq up` tells about DATA) reads it for its metrics and
//! web page.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shardq_protocol::ScalingDecision;
use shardq_protocol::{BrokerStatus, ClusterStatus, Request, Response};
use tracing::{info, warn};

use shardq_router::up_control::AUTOSCALER_LOG;

/// `--autoscale` and its thresholds (flattened into `shardq up`).
#[derive(clap::Args, Clone, Debug)]
pub struct AutoscaleArgs {
    /// Scale the number of brokers by load, within MIN..MAX (e.g. `2..5`). Off by default.
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_range)]
    pub autoscale: Option<(u32, u32)>,
    /// What load means: `msgs` (records produced per second) or `mb` (megabytes produced per
    /// second), per broker.
    #[arg(long, default_value = "msgs", value_parser = ["msgs", "mb"])]
    pub scale_metric: String,
    /// Add a broker while the load per broker stays above this for a whole window.
    #[arg(long, default_value_t = 20_000.0)]
    pub scale_up_above: f64,
    /// Remove a broker while the load per broker stays below this for a whole window.
    #[arg(long, default_value_t = 2_000.0)]
    pub scale_down_below: f64,
    /// Seconds the load must stay past a threshold before a decision.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub scale_window_secs: u64,
    /// Seconds after a decision (and its moves) before the next one.
    #[arg(long, default_value_t = 30)]
    pub scale_cooldown_secs: u64,
}

fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?} is not MIN..MAX (e.g. 2..5)"))?;
    let min: u32 = a
        .trim()
        .parse()
        .map_err(|_| format!("MIN {a:?} is not a number"))?;
    let max: u32 = b
        .trim()
        .parse()
        .map_err(|_| format!("MAX {b:?} is not a number"))?;
    if min == 0 || min > max {
        return Err(format!("{s}: need 1 <= MIN <= MAX"));
    }
    Ok((min, max))
}

/// What the autoscaler decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Add(String),
    Remove(String),
    Hold,
}

/// The decision rule, apart from any I/O (unit-tested with made-up clocks and loads).
pub struct Scaler {
    min: u32,
    max: u32,
    up_above: f64,
    down_below: f64,
    window: Duration,
    cooldown: Duration,
    unit: &'static str,
    samples: VecDeque<(Instant, f64)>,
    last_action: Option<Instant>,
}

impl Scaler {
    pub fn new(args: &AutoscaleArgs, (min, max): (u32, u32)) -> Scaler {
        Scaler {
            min,
            max,
            up_above: args.scale_up_above,
            down_below: args.scale_down_below,
            window: Duration::from_secs(args.scale_window_secs),
            cooldown: Duration::from_secs(args.scale_cooldown_secs),
            unit: if args.scale_metric == "mb" {
                "MB/s"
            } else {
                "msgs/s"
            },
            samples: VecDeque::new(),
            last_action: None,
        }
    }

    /// Takes the load per broker measured at `now` with `brokers` serving and whether moves are
    /// in flight; says what to do.
    pub fn observe(&mut self, now: Instant, load: f64, brokers: u32, moving: bool) -> Decision {
        if brokers < self.min {
            return self.act(
                now,
                Decision::Add(format!(
                    "{brokers} broker(s), below the minimum {}",
                    self.min
                )),
            );
        }
        if brokers > self.max {
            return self.act(
                now,
                Decision::Remove(format!(
                    "{brokers} broker(s), above the maximum {}",
                    self.max
                )),
            );
        }
        if moving
            || self
                .last_action
                .is_some_and(|t| now.duration_since(t) < self.cooldown)
        {
            // A rebalance moves load around: measure again once it is over.
            self.samples.clear();
            return Decision::Hold;
        }
        self.samples.push_back((now, load));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > self.window)
        {
            self.samples.pop_front();
        }
        let covered = self.samples.front().is_some_and(|(t, _)| {
            now.duration_since(*t) + Duration::from_millis(1500) >= self.window
        });
        if !covered {
            return Decision::Hold;
        }
        let n = self.samples.len() as f64;
        let avg = self.samples.iter().map(|(_, l)| l).sum::<f64>() / n;
        let secs = self.window.as_secs();
        if brokers < self.max && self.samples.iter().all(|(_, l)| *l > self.up_above) {
            let why = format!(
                "load {avg:.0} {} per broker over {brokers} broker(s) stayed above {} for {secs} s",
                self.unit, self.up_above
            );
            return self.act(now, Decision::Add(why));
        }
        if brokers > self.min && self.samples.iter().all(|(_, l)| *l < self.down_below) {
            let why = format!(
                "load {avg:.0} {} per broker over {brokers} broker(s) stayed below {} for {secs} s",
                self.unit, self.down_below
            );
            return self.act(now, Decision::Remove(why));
        }
        Decision::Hold
    }

    fn act(&mut self, now: Instant, d: Decision) -> Decision {
        self.samples.clear();
        self.last_action = Some(now);
        d
    }
}

/// The cluster's produce rate between two statuses: (records/s, bytes/s).
struct Meter {
    last: Option<(Instant, u64, u64)>,
}

impl Meter {
    /// Total records and bytes in every shard's log (leaders' reports).
    fn totals(st: &ClusterStatus) -> (u64, u64) {
        st.shards
            .iter()
            .filter_map(|(_, r)| r.as_ref())
            .fold((0, 0), |(n, b), r| (n + r.end_offset, b + r.bytes))
    }

    fn rate(&mut self, now: Instant, st: &ClusterStatus) -> Option<(f64, f64)> {
        let (n, b) = Self::totals(st);
        let prev = self.last.replace((now, n, b));
        let (t0, n0, b0) = prev?;
        let dt = now.duration_since(t0).as_secs_f64();
        (dt > 0.0).then(|| {
            (
                n.saturating_sub(n0) as f64 / dt,
                b.saturating_sub(b0) as f64 / dt,
            )
        })
    }
}

fn append(data: &Path, entry: &ScalingDecision) -> Result<()> {
    let path: PathBuf = data.join(AUTOSCALER_LOG);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(entry)?)?;
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the autoscaler of the `shardq up` cluster in `data` (router at `router`) until the
/// process ends: every second, measure, decide, act.
pub async fn run(args: AutoscaleArgs, range: (u32, u32), data: PathBuf, router: String) {
    let mut scaler = Scaler::new(&args, range);
    let mut meter = Meter { last: None };
    let mb = args.scale_metric == "mb";
    println!(
        "autoscaler on: {}..{} brokers, add above {} {}, remove below {}, window {} s, cool-down {} s",
        range.0,
        range.1,
        args.scale_up_above,
        scaler.unit,
        args.scale_down_below,
        args.scale_window_secs,
        args.scale_cooldown_secs
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Err(e) = step(&mut scaler, &mut meter, mb, &data, &router).await {
            warn!("autoscaler: {e:#}");
        }
    }
}

async fn step(
    scaler: &mut Scaler,
    meter: &mut Meter,
    mb: bool,
    data: &Path,
    router: &str,
) -> Result<()> {
    let client = crate::admin::client(router).await?;
    let st = match client.admin(Request::Status).await? {
        Response::Status(st) => st,
        other => bail!("router answered status with {}", other.name()),
    };
    let now = Instant::now();
    let Some((msgs, bytes)) = meter.rate(now, &st) else {
        return Ok(());
    };
    let serving: Vec<u32> = st
        .brokers
        .iter()
        .filter(|b| b.status == BrokerStatus::Up)
        .map(|b| b.addr.id)
        .collect();
    let brokers = serving.len() as u32;
    let moving = st.moves.iter().any(|m| {
        !matches!(
            m.phase,
            shardq_protocol::MovePhase::Done
                | shardq_protocol::MovePhase::Failed
                | shardq_protocol::MovePhase::RolledBack
        )
    }) || st.brokers.iter().any(|b| b.status == BrokerStatus::Leaving);
    let total = if mb { bytes / 1e6 } else { msgs };
    let load = total / f64::from(brokers.max(1));
    let (action, reason, broker) = match scaler.observe(now, load, brokers, moving) {
        Decision::Hold => return Ok(()),
        Decision::Add(reason) => {
            println!("autoscaler: adding a broker: {reason}");
            info!(%reason, brokers, "autoscaler adds a broker");
            let (id, addr) = crate::up::request_broker(data).await?;
            println!("autoscaler: broker {id} added on {addr}");
            ("add", reason, id)
        }
        Decision::Remove(reason) => {
            // The newest broker goes: the first ones keep their places on the ring.
            let Some(&id) = serving.iter().max() else {
                return Ok(());
            };
            println!("autoscaler: draining and removing broker {id}: {reason}");
            info!(%reason, brokers, broker = id, "autoscaler removes a broker");
            client
                .admin(Request::LeaveBroker { id })
                .await
                .with_context(|| format!("cannot remove broker {id}"))?;
            ("remove", reason, id)
        }
    };
    append(
        data,
        &ScalingDecision {
            time_ms: now_ms(),
            action: action.to_string(),
            reason,
            brokers,
            broker: Some(broker),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(window: u64, cooldown: u64) -> AutoscaleArgs {
        AutoscaleArgs {
            autoscale: Some((2, 4)),
            scale_metric: "msgs".into(),
            scale_up_above: 1000.0,
            scale_down_below: 100.0,
            scale_window_secs: window,
            scale_cooldown_secs: cooldown,
        }
    }

    #[test]
    fn adds_only_after_a_whole_window_above_and_waits_for_the_cooldown() {
        let mut s = Scaler::new(&args(5, 10), (2, 4));
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        for i in 0..4 {
            assert_eq!(
                s.observe(at(i), 5000.0, 2, false),
                Decision::Hold,
                "second {i}"
            );
        }
        // One dip inside the window resets nothing but blocks the decision.
        assert_eq!(s.observe(at(4), 900.0, 2, false), Decision::Hold);
        for i in 5..9 {
            assert_eq!(
                s.observe(at(i), 5000.0, 2, false),
                Decision::Hold,
                "second {i}"
            );
        }
        assert!(matches!(
            s.observe(at(10), 5000.0, 2, false),
            Decision::Add(_)
        ));
        // Cool-down, then moves in flight: hold.
        assert_eq!(s.observe(at(12), 5000.0, 3, false), Decision::Hold);
        assert_eq!(s.observe(at(21), 5000.0, 3, true), Decision::Hold);
        // Samples every second from 22: five of them span the 5 s window.
        for i in 22..26 {
            assert_eq!(
                s.observe(at(i), 5000.0, 3, false),
                Decision::Hold,
                "second {i}"
            );
        }
        assert!(matches!(
            s.observe(at(26), 5000.0, 3, false),
            Decision::Add(_)
        ));
        // At the maximum: never more.
        for i in 40..60 {
            assert_eq!(s.observe(at(i), 50_000.0, 4, false), Decision::Hold);
        }
    }

    #[test]
    fn removes_when_idle_but_never_below_the_minimum() {
        let mut s = Scaler::new(&args(3, 0), (2, 4));
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut removed = None;
        for i in 0..10 {
            if let Decision::Remove(why) = s.observe(at(i), 10.0, 3, false) {
                removed = Some((i, why));
                break;
            }
        }
        let (when, why) = removed.expect("an idle cluster above its minimum shrinks");
        assert!(when >= 2, "not before the window is covered: {when}");
        assert!(why.contains("below 100"), "{why}");
        for i in 20..40 {
            assert_eq!(s.observe(at(i), 0.0, 2, false), Decision::Hold);
        }
        // Outside the range (brokers died, or the range changed): back into it at once.
        assert!(matches!(s.observe(at(50), 0.0, 1, false), Decision::Add(_)));
        assert!(matches!(
            s.observe(at(60), 0.0, 5, false),
            Decision::Remove(_)
        ));
    }

    #[test]
    fn ranges_parse_and_bad_ones_say_why() {
        assert_eq!(parse_range("2..5"), Ok((2, 5)));
        assert_eq!(parse_range("3..3"), Ok((3, 3)));
        assert!(parse_range("5..2").unwrap_err().contains("MIN <= MAX"));
        assert!(parse_range("0..2").is_err());
        assert!(parse_range("2-5").unwrap_err().contains("MIN..MAX"));
        assert!(parse_range("a..5").unwrap_err().contains("MIN"));
    }
}
