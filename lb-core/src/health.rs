//! Active health checking: the [`Prober`] runs one task per backend on the
//! control-plane thread's tokio runtime (current-thread; never in a worker),
//! probes the backend every `interval`, feeds the results to the backend's
//! [`HealthState`] and sends a [`ProbeReport`] per result to the control
//! plane, which decides what to log (the `flipped` ones) and publishes.
//!
//! Files: [`machine`] (the pure rise/fall state machine and its start-up
//! rule), [`verdict`] (what an answer means; [`Reason`]), [`proxy`] (which
//! outbound proxy a probe uses), [`probe`] (one probe: TCP, HTTP, HTTPS,
//! through a proxy or not), and this file (scheduling, reloads, passive
//! failures).
//!
//! Per task: probe, record, report, then sleep `interval` (`fast_interval`
//! while the state is changing), shifted randomly by up to ±`jitter` ×
//! that pause so that backends' probes spread out. A passive failure (a
//! worker could not connect) counts as one failed result and makes the task
//! probe again at once. Backends with `kind = "none"` get no task: they are
//! reported `Up` once.

pub(crate) mod machine;
pub mod probe;
pub(crate) mod proxy;
pub(crate) mod verdict;

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub(crate) use machine::HealthState;
pub use machine::State;
pub use probe::{probe, TlsProbeConfig};
pub use proxy::ProxySettings;
pub use verdict::Reason;

use crate::config::{HealthCheck, HealthKind};
use crate::supervisor::Supervisor;

/// Names a backend: its service and its name within the service (its stable
/// identity; addresses may change on reload).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub service: String,
    pub backend: String,
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.backend)
    }
}

/// One probe result of one backend, as sent to the control plane.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReport {
    pub key: BackendKey,
    /// The state after this result is `Up` (the backend may be used).
    pub healthy: bool,
    /// This result changed the state: log it and publish.
    pub flipped: bool,
    /// This probe's own outcome (a passive failure is
    /// `Err(Reason::Passive(..))`).
    pub result: Result<(), Reason>,
    /// The state after this result.
    pub state: State,
}

/// Drives one task per probed backend; lives on the control-plane thread.
/// Dropping it stops every task.
pub struct Prober {
    /// Where every task sends its reports.
    events: mpsc::UnboundedSender<ProbeReport>,
    /// Backends with an active check.
    tasks: HashMap<BackendKey, BackendTask>,
    /// Backends with `kind = "none"`: no task, always `Up`.
    unprobed: HashSet<BackendKey>,
    /// Spawns the probe tasks so that a panic in one is reported (ringlb's
    /// control plane sets it); None: plain tokio tasks (the prober alone,
    /// in tests).
    supervisor: Option<Supervisor>,
}

impl fmt::Debug for Prober {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prober")
            .field("probed", &self.tasks.len())
            .field("unprobed", &self.unprobed.len())
            .finish()
    }
}

impl Prober {
    /// A prober with no targets; reports go to `events`.
    pub fn new(events: mpsc::UnboundedSender<ProbeReport>) -> Self {
        Prober {
            events,
            tasks: HashMap::new(),
            unprobed: HashSet::new(),
            supervisor: None,
        }
    }

    /// Spawns the probe tasks through `supervisor` from now on.
    pub(crate) fn supervise(&mut self, supervisor: Supervisor) {
        self.supervisor = Some(supervisor);
    }

    /// Makes the probed set exactly `targets` (start-up and every reload).
    /// Must be called within the control plane's tokio runtime.
    ///
    /// - New backends get a task (state `Unknown` until the first result).
    /// - Backends that remain at the same address keep their task and state;
    ///   changed check settings apply (new thresholds, and an immediate
    ///   probe with the new settings). The TLS and proxy settings are rebuilt
    ///   on every call, so a replaced CA file is read again.
    /// - A backend whose address changed is a new backend: new task, state
    ///   `Unknown`.
    /// - Backends not listed any more are stopped.
    /// - `kind = "none"` backends get no task; each newly unprobed backend is
    ///   reported `Up` once.
    pub fn set_targets(&mut self, targets: Vec<(BackendKey, SocketAddr, Arc<HealthCheck>)>) {
        let mut contexts: Vec<Arc<CheckContext>> = Vec::new();
        let mut tasks = HashMap::with_capacity(targets.len());
        let mut unprobed = HashSet::new();
        for (key, addr, check) in targets {
            if check.kind == HealthKind::None {
                let was = match self.tasks.remove(&key) {
                    Some(task) => *task.state.borrow(),
                    None if self.unprobed.contains(&key) => Some(State::Up),
                    None => None,
                };
                if was != Some(State::Up) {
                    self.report_unprobed(&key);
                }
                unprobed.insert(key);
                continue;
            }
            let context = match contexts
                .iter()
                .find(|c| Arc::ptr_eq(&c.check, &check) || *c.check == *check)
            {
                Some(context) => context.clone(),
                None => {
                    let context = Arc::new(CheckContext::new(check.clone()));
                    contexts.push(context.clone());
                    context
                }
            };
            let task = match self.tasks.remove(&key) {
                Some(mut task) if task.addr == addr => {
                    let changed = *task.check != *check;
                    // A send fails only if the task has ended (its report
                    // channel closed); there is nothing left to update then.
                    let _ = task.commands.send(Command::Update { context, changed });
                    task.check = check;
                    task
                }
                // Dropping a replaced task stops it.
                _ => self.spawn(key.clone(), addr, context),
            };
            tasks.insert(key, task);
        }
        // Whatever is left in self.tasks is no longer a target: dropped here,
        // which stops those tasks.
        self.tasks = tasks;
        self.unprobed = unprobed;
    }

    /// A worker failed to reach `key`'s backend: counts as one failed result
    /// and triggers an immediate probe. Never blocks (a channel send); keys
    /// without an active check are ignored.
    pub fn passive_failure(&self, key: &BackendKey, reason: String) {
        if let Some(task) = self.tasks.get(key) {
            let _ = task.commands.send(Command::PassiveFailure(reason));
        }
    }

    /// Resolves when every current target has reported its first result
    /// (true), or at `deadline` (false). Does not borrow the prober while
    /// waiting.
    pub fn first_round(&self, deadline: Instant) -> impl Future<Output = bool> + Send + 'static {
        let mut states: Vec<watch::Receiver<Option<State>>> =
            self.tasks.values().map(|t| t.state.clone()).collect();
        async move {
            for state in &mut states {
                match tokio::time::timeout_at(deadline, state.wait_for(Option::is_some)).await {
                    // Reported, or the task has ended (removed): not waited on.
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
            true
        }
    }

    /// The current state of a target (None: not a target).
    pub fn state(&self, key: &BackendKey) -> Option<State> {
        match self.tasks.get(key) {
            Some(task) => Some(task.state.borrow().unwrap_or(State::Unknown)),
            None => self.unprobed.contains(key).then_some(State::Up),
        }
    }

    fn report_unprobed(&self, key: &BackendKey) {
        let _ = self.events.send(ProbeReport {
            key: key.clone(),
            healthy: true,
            flipped: true,
            result: Ok(()),
            state: State::Up,
        });
    }

    fn spawn(&self, key: BackendKey, addr: SocketAddr, context: Arc<CheckContext>) -> BackendTask {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(None);
        let check = context.check.clone();
        let seed = RandomState::new().hash_one((&key, addr));
        let run = BackendRun {
            machine: HealthState::new(check.rise, check.fall),
            key,
            addr,
            context,
            commands: command_rx,
            events: self.events.clone(),
            state: state_tx,
            rng: XorShift::new(seed),
        };
        let handle = match &self.supervisor {
            Some(s) => s.spawn_task(format!("prober {}", run.key), run.run()),
            None => tokio::spawn(run.run()),
        };
        BackendTask {
            addr,
            check,
            commands,
            state,
            handle,
        }
    }
}

/// The prober's handle on one backend's task. Dropping it stops the task.
struct BackendTask {
    /// The address probed; a different one on reload means a new task.
    addr: SocketAddr,
    /// The settings the task runs with, to tell a changed check on reload.
    check: Arc<HealthCheck>,
    /// Reloads and passive failures, without locking anything.
    commands: mpsc::UnboundedSender<Command>,
    /// The task's state after its last result (None: no result yet).
    state: watch::Receiver<Option<State>>,
    handle: JoinHandle<()>,
}

impl Drop for BackendTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Messages from the prober to a backend's task.
enum Command {
    /// New settings (a reload); `changed` when they differ from the old.
    Update {
        context: Arc<CheckContext>,
        changed: bool,
    },
    /// A worker failed to connect; the reason as the worker put it.
    PassiveFailure(String),
}

/// What a service's backends share: the check and the TLS and proxy settings
/// built from it once (not per probe).
struct CheckContext {
    check: Arc<HealthCheck>,
    /// For `kind = "https"`: the TLS settings, or why they are unusable (then
    /// every probe fails with that reason).
    tls: Option<Result<TlsProbeConfig, String>>,
    proxy: ProxySettings,
}

impl CheckContext {
    /// Builds the TLS and proxy settings, logging what is wrong with them.
    fn new(check: Arc<HealthCheck>) -> Self {
        let proxy = ProxySettings::resolve(&check, |name| std::env::var(name).ok());
        for error in &proxy.errors {
            tracing::warn!("health checks: {error}");
        }
        let tls = (check.kind == HealthKind::Https).then(|| {
            TlsProbeConfig::new(&check).inspect_err(|e| {
                tracing::error!("health checks: HTTPS probes will fail: {e}");
            })
        });
        CheckContext { check, tls, proxy }
    }

    async fn probe(&self, addr: SocketAddr) -> Result<(), Reason> {
        let tls = match &self.tls {
            Some(Err(why)) => return Err(Reason::Tls(why.clone())),
            Some(Ok(tls)) => Some(tls),
            None => None,
        };
        probe(&self.check, addr, tls, &self.proxy).await
    }
}

/// One backend's task: its state machine and its schedule.
struct BackendRun {
    key: BackendKey,
    addr: SocketAddr,
    context: Arc<CheckContext>,
    machine: HealthState,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<ProbeReport>,
    state: watch::Sender<Option<State>>,
    /// Jitter source: per task, so that backends drift apart.
    rng: XorShift,
}

/// Whether the task goes on after handling something.
enum Next {
    /// Keep to the schedule.
    Wait,
    /// Probe now (a passive failure or new settings).
    ProbeNow,
    /// The control plane is gone.
    Stop,
}

impl Next {
    /// The more urgent of two: stopping, then probing now, then waiting.
    fn or(self, other: Next) -> Next {
        match (self, other) {
            (Next::Stop, _) | (_, Next::Stop) => Next::Stop,
            (Next::ProbeNow, _) | (_, Next::ProbeNow) => Next::ProbeNow,
            (Next::Wait, Next::Wait) => Next::Wait,
        }
    }
}

impl BackendRun {
    async fn run(mut self) {
        loop {
            let result = self.context.probe(self.addr).await;
            if !self.record(result) {
                return;
            }
            // What queued up during the probe.
            match self.drain_commands() {
                Next::Stop => return,
                Next::ProbeNow => continue,
                Next::Wait => {}
            }
            let wake = Instant::now() + self.pause();
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(wake) => break,
                    command = self.commands.recv() => {
                        // Everything queued is applied before probing, so
                        // a burst of passive failures counts in full.
                        let next = match command {
                            None => Next::Stop,
                            Some(command) => self.apply(command).or(self.drain_commands()),
                        };
                        match next {
                            Next::Stop => return,
                            Next::ProbeNow => break,
                            Next::Wait => {}
                        }
                    }
                }
            }
        }
    }

    /// Records a result and reports it; false when nobody listens any more.
    /// A probe that could not be made for a local shortage
    /// ([`Reason::Local`], counted and logged where it happened) is neither
    /// a pass nor a failure: the state stays as it was.
    fn record(&mut self, result: Result<(), Reason>) -> bool {
        if matches!(result, Err(Reason::Local(_))) {
            return !self.events.is_closed();
        }
        let flip = self.machine.record(result.is_ok());
        let state = self.machine.state();
        self.state.send_replace(Some(state));
        self.events
            .send(ProbeReport {
                key: self.key.clone(),
                healthy: state == State::Up,
                flipped: flip.is_some(),
                result,
                state,
            })
            .is_ok()
    }

    /// Applies every command already queued (one probe for all of them).
    fn drain_commands(&mut self) -> Next {
        let mut next = Next::Wait;
        loop {
            match self.commands.try_recv() {
                Ok(command) => next = next.or(self.apply(command)),
                Err(mpsc::error::TryRecvError::Empty) => return next,
                Err(mpsc::error::TryRecvError::Disconnected) => return Next::Stop,
            }
        }
    }

    fn apply(&mut self, command: Command) -> Next {
        match command {
            Command::Update { context, changed } => {
                self.machine
                    .set_thresholds(context.check.rise, context.check.fall);
                self.context = context;
                if changed {
                    Next::ProbeNow
                } else {
                    Next::Wait
                }
            }
            Command::PassiveFailure(reason) => {
                if self.record(Err(Reason::Passive(reason))) {
                    Next::ProbeNow
                } else {
                    Next::Stop
                }
            }
        }
    }

    /// The pause before the next probe.
    fn pause(&mut self) -> Duration {
        let check = &self.context.check;
        let base = if self.machine.is_changing() {
            check.fast_interval
        } else {
            check.interval
        };
        jittered(base, check.jitter, self.rng.next_unit())
    }
}

/// `base` shifted by `jitter` × `base` × (2`unit` − 1), that is uniformly
/// within ±`jitter` × `base` for `unit` uniform in [0, 1). `jitter` is
/// clamped to 0.0..=0.5 (the config's range).
fn jittered(base: Duration, jitter: f64, unit: f64) -> Duration {
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 0.5)
    } else {
        0.0
    };
    let factor = 1.0 + jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    base.mul_f64(factor)
}

/// xorshift64*: a tiny, non-cryptographic generator, good enough to spread
/// probes in time (no need for the `rand` crate outside tests).
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // Zero is the generator's one fixed point.
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Uniform in [0, 1).
    fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let bits = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        bits as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::num::NonZeroU32;

    use crate::config::{DegradedIs, DEFAULT_HEALTH_PATH};

    /// A check with the documented defaults.
    pub(crate) fn check(kind: HealthKind) -> HealthCheck {
        HealthCheck {
            kind,
            path: DEFAULT_HEALTH_PATH.to_owned(),
            host: None,
            interval: Duration::from_secs(2),
            fast_interval: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            rise: NonZeroU32::new(2).expect("non-zero"),
            fall: NonZeroU32::new(3).expect("non-zero"),
            jitter: 0.1,
            degraded: DegradedIs::Unhealthy,
            ca_file: None,
            sni: None,
            insecure_skip_verify: false,
            http_proxy: None,
            https_proxy: None,
            no_proxy: None,
            max_body: 64 * 1024,
            port: None,
            address: None,
            send_proxy: None,
        }
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let base = Duration::from_secs(2);
        assert_eq!(jittered(base, 0.1, 0.0), Duration::from_millis(1800));
        assert_eq!(jittered(base, 0.1, 0.5), base);
        assert_eq!(jittered(base, 0.0, 0.99), base);
        assert_eq!(
            jittered(base, 5.0, 0.0),
            Duration::from_secs(1),
            "clamped to 0.5"
        );
        assert_eq!(jittered(base, f64::NAN, 0.0), base);
        assert_eq!(jittered(base, -1.0, 0.0), base);
    }

    #[test]
    fn xorshift_is_uniformish_in_unit_interval() {
        let mut rng = XorShift::new(0);
        let mut low = 0;
        for _ in 0..10_000 {
            let u = rng.next_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
            if u < 0.5 {
                low += 1;
            }
        }
        assert!((4_500..5_500).contains(&low), "{low} of 10000 below 0.5");
    }

    #[test]
    fn differently_seeded_generators_differ() {
        let a = XorShift::new(1).next_unit();
        let b = XorShift::new(2).next_unit();
        assert_ne!(a, b);
    }

    #[test]
    fn backend_key_displays_as_service_slash_backend() {
        let key = BackendKey {
            service: "artifactory".into(),
            backend: "art1".into(),
        };
        assert_eq!(key.to_string(), "artifactory/art1");
    }
}
